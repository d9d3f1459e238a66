"""A small OpenAI-compatible server for concurrency tests (starlette + uvicorn, from llama-cpp-python's
server extra): every completion answers ``echo:<prompt>`` after a fixed latency, streamed as the real
servers do, and every chat completion ``echo:<the last message's text>`` (``/v1/chat/completions``). It counts requests in flight (``GET /stats``), answers 429 with ``Retry-After: 0`` to
every Nth request when asked to, 500 to every prompt that starts with ``fail``, to every prompt that
starts with ``garble`` a stream whose second event is a malformed JSON line, and to every prompt that
starts with ``cut`` a stream cut after its first event (no ``finish_reason``, no ``[DONE]``), as
llama-cpp-python's server cuts a stream when another request arrives.

    python stubserver.py PORT LATENCY_S RATE_LIMIT_EVERY [MODELS_DELAY_S] [--api-key=KEY] [--serial]   (0: never)

With ``--api-key=KEY`` every ``/v1`` request must carry ``Authorization: Bearer KEY``: one without a key
is answered 401, one with another key 403 (``/stats`` stays open, for readiness probes). With ``--serial``
it serves one request at a time, as a server bound by its model does (a llama.cpp server): the others
wait their turn, so its throughput is one request per LATENCY_S however many are sent at once.

The first model list (the readiness probe) comes at once; later ones after MODELS_DELAY_S, as from a
busy server.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
FLAGS = dict(a[2:].partition("=")[::2] for a in sys.argv[1:] if a.startswith("--"))
LATENCY = float(ARGS[1])
EVERY = int(ARGS[2])
MODELS_DELAY = float(ARGS[3]) if len(ARGS) > 3 else 0.0
API_KEY = FLAGS.get("api-key")
SERIAL = asyncio.Lock() if "serial" in FLAGS else None  # one request served at a time
stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "rate_limited": 0, "refused": 0, "garbled": 0,
         "cut": 0}


def refusal(request: Request) -> Response | None:
    """401 without a key, 403 with the wrong one, where the server was started with --api-key."""
    if API_KEY is None:
        return None
    given = request.headers.get("authorization")
    if given == f"Bearer {API_KEY}":
        return None
    stats["refused"] += 1
    if given is None:
        return JSONResponse({"error": {"message": "missing API key"}}, status_code=401)
    return JSONResponse({"error": {"message": "invalid API key"}}, status_code=403)


async def models(request: Request) -> Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    stats["models_asked"] = stats.get("models_asked", 0) + 1
    if stats["models_asked"] > 1:  # the first answer is the fixture's readiness probe
        await asyncio.sleep(MODELS_DELAY)
    return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})


async def get_stats(request: Request) -> Response:
    return JSONResponse(stats)


async def in_flight() -> None:
    """The server's latency, counted as a request in flight (after its turn, with --serial)."""
    if SERIAL is not None:
        async with SERIAL:
            await _serve()
    else:
        await _serve()


async def _serve() -> None:
    stats["in_flight"] += 1
    stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
    try:
        await asyncio.sleep(LATENCY)
    finally:
        stats["in_flight"] -= 1


async def completions(request: Request) -> Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    body = await request.json()
    stats["requests"] += 1
    if EVERY and stats["requests"] % EVERY == 0:
        stats["rate_limited"] += 1
        return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0"})
    if body["prompt"].startswith("fail"):
        return JSONResponse({"error": "boom"}, status_code=500)
    await in_flight()
    text = "echo:" + body["prompt"]
    garbled = body["prompt"].startswith("garble")
    stats["garbled"] += garbled
    cut = body["prompt"].startswith("cut")
    stats["cut"] += cut

    async def events():
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}) + "\n\n"
        if cut:
            return
        if garbled:  # a JSON object cut short, as from a server (or proxy) that writes a broken event
            yield 'data: {"choices": [{"index": 0, "text": "more\n\n'
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": 3}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def chat_completions(request: Request) -> Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    body = await request.json()
    stats["requests"] += 1
    await in_flight()
    text = "echo:" + (body["messages"][-1].get("content") or "")

    async def events():
        yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                                  "finish_reason": None}]}) + "\n\n"
        yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": 3}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/models", models), Route("/stats", get_stats),
                        Route("/v1/completions", completions, methods=["POST"]),
                        Route("/v1/chat/completions", chat_completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

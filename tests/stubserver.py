"""A small OpenAI-compatible server for concurrency tests (starlette + uvicorn, from llama-cpp-python's
server extra): every completion answers ``echo:<prompt>`` after a fixed latency, streamed as the real
servers do. It counts requests in flight (``GET /stats``), answers 429 with ``Retry-After: 0`` to
every Nth request when asked to, and 500 to every prompt that starts with ``fail``.

    python stubserver.py PORT LATENCY_S RATE_LIMIT_EVERY [MODELS_DELAY_S]   (0: never)

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

LATENCY = float(sys.argv[2])
EVERY = int(sys.argv[3])
MODELS_DELAY = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "rate_limited": 0}


async def models(request: Request) -> Response:
    stats["models_asked"] = stats.get("models_asked", 0) + 1
    if stats["models_asked"] > 1:  # the first answer is the fixture's readiness probe
        await asyncio.sleep(MODELS_DELAY)
    return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})


async def get_stats(request: Request) -> Response:
    return JSONResponse(stats)


async def completions(request: Request) -> Response:
    body = await request.json()
    stats["requests"] += 1
    if EVERY and stats["requests"] % EVERY == 0:
        stats["rate_limited"] += 1
        return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0"})
    if body["prompt"].startswith("fail"):
        return JSONResponse({"error": "boom"}, status_code=500)
    stats["in_flight"] += 1
    stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
    try:
        await asyncio.sleep(LATENCY)
    finally:
        stats["in_flight"] -= 1
    text = "echo:" + body["prompt"]

    async def events():
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}) + "\n\n"
        yield "data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": 3}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/models", models), Route("/stats", get_stats),
                        Route("/v1/completions", completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

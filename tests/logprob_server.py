"""A small OpenAI-compatible server that scores prompts with transformers, as vLLM's server does.

    python logprob_server.py PORT MODEL_FOLDER [NAME]

``GET /v1/models`` lists NAME (default ``smol``). ``POST /v1/completions`` with ``echo: true``,
``logprobs: N`` and ``max_tokens`` 0 or 1 answers the prompt's own tokens in ``choices[0].logprobs``:
``tokens`` (each token decoded alone), ``token_logprobs`` (the log-probability of token k under the
distribution after tokens 0..k-1; ``null`` for the first token, which nothing predicts), ``top_logprobs``
(the N likeliest tokens at that position and the prompt's own token; ``null`` first) and ``text_offset``
(where each token starts: the running sum of the decoded tokens' lengths, as vLLM computes it). With
``max_tokens: 1`` the greedy next token follows, at offset ``len(prompt)``. The prompt is tokenized as
vLLM does (the tokenizer's default special tokens). Everything else is answered 400: the tests only
score prompts.
"""

from __future__ import annotations

import asyncio
import sys
import warnings

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch warns about the pynvml shim
    import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

FOLDER = sys.argv[2]
NAME = sys.argv[3] if len(sys.argv) > 3 else "smol"
tokenizer = AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)
DTYPE_KW = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # 4.x's name
model = AutoModelForCausalLM.from_pretrained(FOLDER, local_files_only=True, **{DTYPE_KW: torch.float32}).eval()
lock = asyncio.Lock()  # one forward pass at a time


def score(prompt: str, top_n: int, max_tokens: int) -> dict:
    ids = tokenizer(prompt).input_ids
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    tokens = [tokenizer.decode([i]) for i in ids]
    values: list[float | None] = [None]
    top: list[dict[str, float] | None] = [None]
    for k in range(1, len(ids)):
        row = logprobs[k - 1]  # the distribution after tokens 0..k-1 predicts token k
        values.append(float(row[ids[k]]))
        top.append(alternatives(row, top_n, ids[k]))
    text = ""
    if max_tokens == 1:
        row = logprobs[-1]
        chosen = int(row.argmax())
        text = tokenizer.decode([chosen])
        tokens.append(text)
        values.append(float(row[chosen]))
        top.append(alternatives(row, top_n, chosen))
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {"text": prompt + text, "logprobs": {"tokens": tokens, "token_logprobs": values, "top_logprobs": top,
                                                "text_offset": offsets},
            "usage": {"prompt_tokens": len(ids), "completion_tokens": max_tokens,
                      "total_tokens": len(ids) + max_tokens}}


def alternatives(row: torch.Tensor, top_n: int, own: int) -> dict[str, float]:
    best = torch.topk(row, top_n).indices.tolist()
    return {tokenizer.decode([i]): float(row[i]) for i in [*best, own]}


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": NAME, "object": "model",
                                                     "max_model_len": model.config.max_position_embeddings}]})


async def completions(request: Request) -> Response:
    body = await request.json()
    prompt, top_n, max_tokens = body.get("prompt"), body.get("logprobs"), body.get("max_tokens", 16)
    if body.get("model") != NAME:
        return JSONResponse({"error": {"message": f"model {body.get('model')!r} does not exist"}}, status_code=404)
    if not (isinstance(prompt, str) and prompt and body.get("echo") is True and isinstance(top_n, int)
            and top_n >= 1 and max_tokens in (0, 1) and not body.get("stream")):
        return JSONResponse({"error": {"message": "this test server only scores prompts: echo=true, logprobs>=1, "
                                                  "max_tokens 0 or 1, a non-empty string prompt, no stream"}},
                            status_code=400)
    async with lock:
        result = await asyncio.to_thread(score, prompt, top_n, max_tokens)
    usage = result.pop("usage")
    return JSONResponse({"id": "cmpl-test", "object": "text_completion", "model": NAME,
                         "choices": [{"index": 0, **result, "finish_reason": "length"}], "usage": usage})


app = Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

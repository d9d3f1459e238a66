"""Loglikelihood over an OpenAI-compatible server: the legacy completions API with ``echo`` and
``logprobs`` returns the prompt's own tokens with their log-probabilities; the continuation's are those
at or after the end of the context.

Servers whose echoed logprobs are one token off (llama-cpp-python 0.3.x) are refused: asked once per
backend on a text any model predicts well, if the top-ranked token at each position matches the *next*
prompt token more often than the token at that position, every score would be read against the wrong
distribution.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import httpx

from .base import Loglikelihood, UnsupportedTask
from .openai_http import PROBE_TIMEOUT, Server, headers, tls
from .specs import ModelSpec

ALIGNMENT_PROBE = ("One, two, three, four, five, six, seven, eight, nine, ten. Monday, Tuesday, Wednesday, "
                   "Thursday, Friday, Saturday, Sunday. January, February, March, April, May, June.")


def echo_payload(model: str, prompt: str) -> dict[str, Any]:
    """A completions request that returns the prompt's own tokens with their logprobs."""
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}


def _top1(alternatives: dict[str, float] | None) -> str | None:
    return max(alternatives, key=alternatives.__getitem__) if alternatives else None


def echo_is_shifted(tokens: Sequence[str], top: Sequence[dict[str, float] | None]) -> bool:
    """True when position k's top alternatives predict token k+1 rather than token k."""
    aligned = sum(1 for k in range(1, min(len(tokens), len(top))) if _top1(top[k]) == tokens[k])
    shifted = sum(1 for k in range(1, min(len(tokens) - 1, len(top))) if _top1(top[k]) == tokens[k + 1])
    return shifted > aligned


def score_echo(logprobs: dict[str, Any], context: str, prompt: str, label: str) -> Loglikelihood:
    """Sum the logprobs of the echoed tokens that start at or after the end of ``context``."""
    tokens, values, offsets = logprobs["tokens"], logprobs["token_logprobs"], logprobs["text_offset"]
    top = logprobs.get("top_logprobs") or []
    total, greedy, n_context, n_continuation = 0.0, True, 0, 0
    for k, (value, offset) in enumerate(zip(values, offsets)):
        if offset >= len(prompt):
            break  # the generated token after the echo
        if offset < len(context):
            n_context += 1
            continue
        if value is None:
            raise UnsupportedTask(f"{label}: the server gives no logprob for the first token; give a non-empty context")
        total += float(value)
        n_continuation += 1
        if k < len(top) and _top1(top[k]) not in (None, tokens[k]):
            greedy = False
    return Loglikelihood(total, greedy if top else None, n_context, n_continuation)


def echoes_aligned(spec: ModelSpec) -> bool | None:
    """Before loading, once: whether the server echoes prompt logprobs, aligned (False: no logprobs, or
    one token off); None where it could not be asked (an unreachable server is reported at start-up). Of
    several servers, the first that can be asked answers for all: they serve the same model."""
    if spec.servers:
        return next((found for found in map(echoes_aligned, map(spec.at, spec.servers)) if found is not None), None)
    try:
        with httpx.Client(base_url=spec.base_url or "", headers=headers(), timeout=PROBE_TIMEOUT,
                          verify=tls("sync")) as client:
            response = client.post("/completions", json=echo_payload(spec.target, ALIGNMENT_PROBE))
        if response.status_code >= 400:
            return False
        logprobs = (response.json().get("choices") or [{}])[0].get("logprobs") or {}
        return bool(logprobs.get("tokens")) and not echo_is_shifted(logprobs["tokens"],
                                                                     logprobs.get("top_logprobs") or [])
    except (httpx.HTTPError, ValueError, AttributeError, TypeError, IndexError):
        return None


class EchoScorer:
    """A server's echoed logprobs, checked for alignment once."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._aligned: bool | None = None  # whether echoed prompt logprobs can be trusted
        self._asking = asyncio.Lock()  # the first request asks; those that come meanwhile wait for its answer

    async def score(self, context: str, continuation: str) -> Loglikelihood:
        """The loglikelihood of ``continuation`` after ``context`` (whitespace already moved; the
        alignment checked before)."""
        prompt = context + continuation
        return score_echo(await self.echo(prompt), context, prompt, self.server.spec.label)

    async def echo(self, prompt: str) -> dict[str, Any]:
        """The server's log-probabilities of ``prompt``'s own tokens (completions with echo)."""
        spec = self.server.spec
        response = await self.server.post("/completions", echo_payload(spec.target, prompt))
        choice = (response.json().get("choices") or [{}])[0]
        logprobs = choice.get("logprobs") or {}
        if not logprobs.get("tokens") or logprobs.get("token_logprobs") is None or logprobs.get("text_offset") is None:
            raise UnsupportedTask(
                f"{spec.label}: the server at {spec.base_url} returns no prompt logprobs "
                "(completions with echo+logprobs); use an hf: or vllm: spec for loglikelihood"
            )
        return logprobs

    async def check_alignment(self) -> None:
        """Refuse a server whose echoed logprobs are one token off (see the module's text)."""
        if self._aligned is None:
            async with self._asking:
                if self._aligned is None:  # (a fault leaves it unknown: the next request asks again)
                    logprobs = await self.echo(ALIGNMENT_PROBE)
                    self._aligned = not echo_is_shifted(logprobs["tokens"], logprobs.get("top_logprobs") or [])
        if not self._aligned:
            spec = self.server.spec
            raise UnsupportedTask(
                f"{spec.label}: the server at {spec.base_url} scores each echoed prompt token with "
                "the distribution that follows it (a known llama-cpp-python bug), so its loglikelihoods would "
                "be wrong; use an hf: or vllm: spec for loglikelihood and choose"
            )

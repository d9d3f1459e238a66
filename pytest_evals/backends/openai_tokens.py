"""Prompt tokens where an OpenAI-compatible server does not report them (llama.cpp's streams send no
usage): counted by the server's own tokenizer endpoint where it has one, else estimated, and marked so.

A chat the server cannot count is estimated from its messages' text, counted, plus each message's
template tokens and what the template adds around them (learnt once per process with one unstreamed
request of one token); where nothing can be counted, from the text's length at a deliberately high rate.
A cost from an estimate still counts against the budget, marked ``estimated``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from .specs import ModelSpec

CHARS_PER_TOKEN = 3.0  # a deliberately high token estimate where the server cannot count a chat
TEMPLATE_TOKENS_PER_MESSAGE = 5  # what a chat template adds around a message (role markers, separators)


def length_estimate(payload: dict[str, Any]) -> int:
    """Tokens of a chat payload from its length alone, erring high (a token per three characters)."""
    text = json.dumps(payload["messages"]) + json.dumps(payload.get("tools") or [])
    return int(len(text) / CHARS_PER_TOKEN) + 1


class PromptCounter:
    """One server's tokenizer endpoint (found on first use) and its chat template's overheads."""

    def __init__(self, spec: ModelSpec, client: Any) -> None:
        self.spec = spec
        self._client = client  # () -> the server's current httpx.AsyncClient
        self._endpoint: str | None = None  # which tokenizer endpoint the server has
        self._missing: set[str] = set()
        self._overheads: dict[bool, asyncio.Future[int]] = {}  # chat template tokens beyond the text, by system

    async def prompt_tokens(self, payload: dict[str, Any], usage: dict[str, Any]) -> tuple[int | None, bool]:
        """(prompt tokens, whether estimated): the server's usage, else its tokenizer on the prompt, else
        (a chat the server cannot count: llama.cpp) its tokenizer on the messages' text plus each message's
        template tokens, else a deliberately high estimate from the length."""
        if usage.get("prompt_tokens") is not None:
            return usage["prompt_tokens"], False
        counted = await self.count(payload)
        if counted is not None:
            return counted, False
        if "messages" not in payload:
            return None, False
        text = _messages_text(payload)
        per_message = TEMPLATE_TOKENS_PER_MESSAGE * len(payload.get("messages") or ())
        counted = await self.count({"prompt": text})
        if counted is None:
            return int(len(text) / CHARS_PER_TOKEN) + 1 + per_message, True
        return counted + per_message + await self._template_overhead(payload, counted + per_message), True

    async def _template_overhead(self, payload: dict[str, Any], estimate: int) -> int:
        """What the chat template adds beyond the messages' text (a default system prompt where none is
        given, the generation prompt), learnt once per process for chats with and without a system
        message: one unstreamed request of one token, whose usage the server does report."""
        has_system = any(m.get("role") == "system" for m in payload.get("messages") or ())
        if has_system not in self._overheads:
            self._overheads[has_system] = asyncio.ensure_future(self._probe_overhead(payload, estimate))
        return await asyncio.shield(self._overheads[has_system])

    async def _probe_overhead(self, payload: dict[str, Any], estimate: int) -> int:
        body = {"model": self.spec.target, "messages": payload.get("messages"), "max_tokens": 1, "temperature": 0,
                "stream": False}
        try:
            response = await self._client().post("/chat/completions", json=body)
            true = (response.json().get("usage") or {}).get("prompt_tokens") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            true = None
        return true - estimate if isinstance(true, int) else 0

    async def count(self, payload: dict[str, Any]) -> int | None:
        """Prompt tokens from the server's own tokenizer, where it has an endpoint for it:
        llama-cpp-python's ``/extras/tokenize/count`` (text prompts) or vLLM's ``/tokenize``."""
        root = (self.spec.base_url or "").removesuffix("/v1")
        candidates = {
            "llama.cpp": (f"{root}/extras/tokenize/count", {"input": payload.get("prompt")}),
            "vllm": (f"{root}/tokenize", {"model": self.spec.target,
                                          **({"prompt": payload["prompt"]} if "prompt" in payload
                                             else {"messages": payload.get("messages")})}),
        }
        order = [self._endpoint] if self._endpoint else list(candidates)
        for name in order:
            if name in self._missing or (name == "llama.cpp" and payload.get("prompt") is None):
                continue  # known to be missing, or it cannot count a chat's messages
            url, body = candidates[name]
            try:
                response = await self._client().post(url, json=body)
                count = response.json().get("count") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                return None  # a busy or failing server: no count this time, but the endpoint may exist
            if isinstance(count, int):
                self._endpoint = name
                return count
            if self._endpoint is None:
                self._missing.add(name)
        return None


def _messages_text(payload: dict[str, Any]) -> str:
    """A chat request's text as a chat template renders it, less the template's own tokens."""
    parts = []
    for message in payload.get("messages") or ():
        parts.append(f"{message.get('role')}\n{message.get('content') or ''}")
        if message.get("tool_calls"):
            parts.append(json.dumps(message["tool_calls"]))
    if payload.get("tools"):
        parts.append(json.dumps(payload["tools"]))
    return "\n".join(parts)

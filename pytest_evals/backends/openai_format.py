"""The OpenAI wire format: a chat request's payload, a streamed answer's events put together, and the
tool calls of an answer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .base import ChatRequest, Stopwatch, ToolCall
from .tool_format import as_call


def chat_payload(request: ChatRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": list(request.messages), "max_tokens": request.max_tokens,
                               "temperature": request.temperature}
    if request.tools:
        payload["tools"] = list(request.tools)
        forced = request.forced_tool  # llama.cpp refuses "required"; with one tool it means that tool
        payload["tool_choice"] = ({"type": "function", "function": {"name": forced}} if forced
                                  else request.tool_choice)
    return payload


@dataclass
class Streamed:
    """A streamed answer so far: its text pieces, tool calls, usage and finish reason."""

    parts: list[str] = field(default_factory=list)
    events: int = 0
    with_content: int = 0  # events that carried text or a tool call's piece (one token each on llama.cpp)
    usage: dict[str, Any] = field(default_factory=dict)
    finish: str | None = None
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def add(self, event: dict[str, Any], watch: Stopwatch) -> None:
        self.events += 1
        self.usage = event.get("usage") or self.usage
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            piece = choice.get("text") if "text" in choice else delta.get("content")
            if piece:
                watch.mark_first()
                self.parts.append(piece)
                self.with_content += 1
            for call in delta.get("tool_calls") or []:
                watch.mark_first()
                self.with_content += 1
                _merge_call_delta(self.calls, call)
            self.finish = choice.get("finish_reason") or self.finish

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(_tool_call(self.calls[k]) for k in sorted(self.calls))


def tool_calls_of(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    """The tool calls of an unstreamed answer's message."""
    return tuple(_tool_call({"id": c.get("id") or "", "name": (c.get("function") or {}).get("name") or "",
                             "arguments": (c.get("function") or {}).get("arguments") or ""})
                 for c in message.get("tool_calls") or [])


def _merge_call_delta(calls: dict[int, dict[str, str]], delta: dict[str, Any]) -> None:
    """Add one streamed ``tool_calls`` delta: arguments arrive in pieces, the id and name once
    (llama.cpp repeats them in every piece, so they are kept, not concatenated)."""
    entry = calls.setdefault(int(delta.get("index") or 0), {"id": "", "name": "", "arguments": ""})
    function = delta.get("function") or {}
    entry["id"] = entry["id"] or delta.get("id") or ""
    entry["name"] = entry["name"] or function.get("name") or ""
    entry["arguments"] += function.get("arguments") or ""


def _tool_call(entry: dict[str, str]) -> ToolCall:
    """A finished call; arguments the model wrote badly become the call's error, fed back to it."""
    call = as_call({"name": entry["name"], "arguments": entry["arguments"]}, None)
    assert call is not None  # a str name always makes a call
    return replace(call, id=entry["id"] or call.id)

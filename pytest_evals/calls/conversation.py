"""Conversations: the history in OpenAI's message format, the tool loop, and trimming to the context window.

``model.conversation(...)`` returns a :class:`Conversation`; ``model.chat(messages, tools=...)`` runs the
same loop once over the messages it is given. Each round the model either answers or asks for tool
calls; the plugin runs the Python functions, sends back each result (or the exception, as the tool's
error), and asks again, up to ``max_rounds`` rounds. Every message is a row of ``turns`` and every tool
run a row of ``tool_calls``, tied to the case.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

from ..backends.base import TOOL_CHOICES, Backend, ChatRequest, ContextOverflow, Message, Reply, ToolCall
from ..store.rows import ToolCallRow, TurnRow, now
from ..tools import Tool, tool

MAX_ROUNDS = 8


@dataclass
class Transcript:
    """The turns and tool runs of one case's conversations, until the case is recorded."""

    turns: list[TurnRow] = field(default_factory=list)
    tool_calls: list[ToolCallRow] = field(default_factory=list)
    conversations: int = 0

    def new_conversation(self) -> int:
        self.conversations += 1
        return self.conversations


class ChatCaller(Protocol):
    """What a conversation needs of the model it talks to (``model.Model`` is one)."""

    transcript: Transcript

    @property
    def backend(self) -> Backend: ...

    def chat_request(self, request: ChatRequest, *, conversation: int | None = None, dropped: int = 0) -> Reply: ...


def as_tools(tools: Sequence[Callable[..., Any] | Tool] | None) -> list[Tool]:
    __tracebackhide__ = True  # a mistake in the test's arguments points at the test's line
    made = [t if isinstance(t, Tool) else tool(t) for t in tools or ()]
    names = [t.name for t in made]
    if len(set(names)) != len(names):
        raise ValueError(f"two tools share a name: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return made


def check_tool_choice(tool_choice: str, tools: Sequence[Tool]) -> None:
    __tracebackhide__ = True
    names = [t.name for t in tools]
    if tool_choice in TOOL_CHOICES or tool_choice in names:
        if tool_choice == "required" and not tools:
            raise ValueError('tool_choice="required" needs tools=[...]')
        return
    raise ValueError(f"tool_choice={tool_choice!r}: expected 'auto', 'none', 'required' or a tool's name"
                     + (f" ({', '.join(names)})" if names else " (no tools given)"))


def result_text(call: ToolCall) -> str:
    """What the model reads back: the result as JSON (a string as it is), or the error."""
    if call.error is not None:
        return f"error: {call.error}"
    if isinstance(call.result, str):
        return call.result
    try:
        return json.dumps(call.result)
    except (TypeError, ValueError):
        return repr(call.result)


def wire_call(call: ToolCall) -> dict[str, Any]:
    """A requested call as an assistant message's ``tool_calls`` entry (arguments as a JSON string)."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}


class Conversation:
    """A multi-turn chat with one model: ``say(text)`` adds a user turn and returns the model's answer."""

    def __init__(self, model: ChatCaller, system: str | None = None,
                 tools: Sequence[Callable[..., Any] | Tool] | None = None, tool_choice: str = "auto", *,
                 max_tokens: int = 256, temperature: float = 0.0, max_rounds: int = MAX_ROUNDS,
                 context_window: int | None = None, trim: bool = True) -> None:
        __tracebackhide__ = True
        self.tools = as_tools(tools)
        check_tool_choice(tool_choice, self.tools)
        if max_rounds < 0:
            raise ValueError(f"max_rounds={max_rounds}: expected 0 or more")
        self.tool_choice = tool_choice
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_rounds = max_rounds
        self.context_window = context_window
        self.trim = trim
        self._model = model
        self._transcript = model.transcript
        self.id = self._transcript.new_conversation()
        self.messages: list[Message] = []  # the history the model sees (after any trimming)
        self.dropped: list[Message] = []  # trimmed out of the window, oldest first
        self.tool_calls: list[ToolCall] = []  # every tool run, with its result or error
        self._rows: dict[int, TurnRow] = {}  # id(message) -> its turn row, to mark it dropped
        if system is not None:
            self._add({"role": "system", "content": system})

    def __repr__(self) -> str:
        return f"<Conversation {len(self.messages)} messages, {len(self.tool_calls)} tool calls>"

    # --- public -----------------------------------------------------------------------------------
    def say(self, text: str) -> Reply:
        """Add a user message and return the model's answer, after any tool rounds it asked for."""
        __tracebackhide__ = True
        self._add({"role": "user", "content": text})
        return self.respond()

    def respond(self) -> Reply:
        """Ask the model for the next assistant turn (the tool loop included)."""
        __tracebackhide__ = True
        schemas = tuple(t.schema for t in self.tools)
        by_name = {t.name: t for t in self.tools}
        ran: list[ToolCall] = []
        choice = self.tool_choice
        for round_number in range(self.max_rounds + 1):
            if round_number == self.max_rounds and self.tools:
                choice = "none"  # the last round must answer in words
            reply = self._ask(schemas, choice)
            calls = list(reply.tool_calls) if choice != "none" else []
            position = self._add(
                {"role": "assistant", "content": reply.text,  # "" rather than null: llama.cpp refuses null
                 **({"tool_calls": [wire_call(c) for c in calls]} if calls else {})})
            if not calls:
                return replace(reply, tool_calls=tuple(ran))
            for call in calls:
                done = self._run_tool(call, by_name, position)
                ran.append(done)
                self.tool_calls.append(done)
                self._add({"role": "tool", "tool_call_id": done.id, "name": done.name, "content": result_text(done)})
            if choice not in ("auto", "none"):
                choice = "auto"  # a forced tool is forced once per user turn, then the model may answer
        raise AssertionError("unreachable: the last round asks with tool_choice='none'")

    # --- the loop's parts -------------------------------------------------------------------------
    def _ask(self, schemas: tuple[dict[str, Any], ...], choice: str) -> Reply:
        __tracebackhide__ = True
        while True:
            self._fit(schemas, choice)
            request = ChatRequest(tuple(self.messages), self.max_tokens, self.temperature, schemas, choice)
            try:
                return self._model.chat_request(request, conversation=self.id, dropped=len(self.dropped))
            except ContextOverflow as exc:
                if not (self.trim and self._drop_oldest_turn()):
                    raise
                if exc.window and self.context_window is None:
                    self.context_window = exc.window

    def _fit(self, schemas: tuple[dict[str, Any], ...], choice: str) -> None:
        """Drop the oldest non-system turns until the prompt and the reply fit the context window."""
        if not self.trim:
            return
        backend = self._model.backend
        window = self.context_window or backend.context_window()
        if not window:
            return
        while True:
            count = backend.count_chat_tokens(ChatRequest(tuple(self.messages), self.max_tokens,
                                                          self.temperature, schemas, choice))
            if count is None or count + self.max_tokens <= window or not self._drop_oldest_turn():
                return

    def _drop_oldest_turn(self) -> bool:
        """Remove the oldest user turn and what answered it; never the system prompt or the last turn."""
        users = [i for i, m in enumerate(self.messages) if m.get("role") == "user"]
        if len(users) < 2:
            return False
        start, end = users[0], users[1]
        for message in self.messages[start:end]:
            self.dropped.append(message)
            row = self._rows.get(id(message))
            if row is not None:
                row.dropped = 1
        del self.messages[start:end]
        return True

    def _run_tool(self, call: ToolCall, by_name: dict[str, Tool], position: int) -> ToolCall:
        started_at, clock = now(), time.perf_counter()
        if call.error is None and call.name not in by_name:
            call = replace(call, error=f"there is no tool named {call.name!r}; the tools are {', '.join(by_name)}")
        if call.error is None:
            done = by_name[call.name].call(call.arguments)
            call = replace(done, id=call.id)
        call = replace(call, duration_s=time.perf_counter() - clock)
        self._transcript.tool_calls.append(ToolCallRow(
            conversation=self.id, position=position, call_id=call.id, name=call.name,
            arguments=json.dumps(call.arguments, default=repr),
            result=None if call.error is not None else result_text(call),
            error=call.error, duration_s=call.duration_s, started_at=started_at))
        return call

    def _add(self, message: Message) -> int:
        self.messages.append(message)
        position = len(self._transcript.turns)
        row = TurnRow(conversation=self.id, position=position, role=message["role"],
                      content=message.get("content"),
                      tool_calls=json.dumps(message["tool_calls"]) if message.get("tool_calls") else None,
                      tool_call_id=message.get("tool_call_id"), name=message.get("name"), started_at=now())
        self._transcript.turns.append(row)
        self._rows[id(message)] = row
        return position

    def seed(self, messages: Sequence[Message]) -> None:
        """Start from an existing history (``model.chat``)."""
        for message in messages:
            self._add(dict(message))

"""Tool calls as text, for backends that only see and write text (transformers, vLLM's offline engine).

- :func:`parse_tool_calls` finds the calls in a model's output, in the formats open models write:
  Hermes/Qwen ``<tool_call>{...}</tool_call>``, Mistral ``[TOOL_CALLS] [...]``, Llama 3.x
  ``<|python_tag|>{...}``, functionary/llama.cpp ``functions.NAME:\\n{...}``, a fenced JSON block, and
  bare JSON (one object, or a list of objects, with ``name`` and ``arguments`` or ``parameters``).
- :func:`plain_messages` renders tools, tool calls and tool results as text for chat templates that
  know nothing of tools, in the Hermes format the parser reads back.
- :func:`forced_steps` (and :func:`forced_call`, which drives it for one call) writes a call the model
  was told to make (``tool_choice`` = a name or ``required``) one field at a time: the structure, names and quoting come from the schema, the model
  only chooses the tool (by likelihood) and fills each value. The call is therefore always well-formed,
  even from a tiny model.

Nothing here imports a heavy library.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence, Union

from .base import Message, ToolCall

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
FENCED = re.compile(r"```(?:json|tool_call|tool_code)?\s*(.*?)```", re.S)
FUNCTIONS = re.compile(r"functions\.(\w+):\s*(\{.*)", re.S)
CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


def _decode_values(text: str) -> list[Any]:
    """Every JSON value in ``text`` that follows another (``{..}; {..}`` or ``{..}\\n{..}``)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        value, i = decoder.raw_decode(text, i)
        values.append(value)
    return values


def as_call(obj: Any, names: Sequence[str] | None) -> ToolCall | None:
    """A call from ``{"name": .., "arguments"|"parameters": ..}`` (also OpenAI's ``{"function": {...}}``)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCall(name, {}, error=f"the model wrote malformed arguments for {name}: {exc}", id=new_call_id())
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, error=f"the arguments for {name} are not a JSON object: {arguments!r}", id=new_call_id())
    if names is not None and name not in names:
        return ToolCall(name, arguments, error=f"there is no tool named {name!r}; the tools are {', '.join(names)}",
                        id=new_call_id())
    return ToolCall(name, arguments, id=new_call_id())


def _calls_in(payload: str, names: Sequence[str] | None, strict: bool) -> list[ToolCall] | None:
    """The calls in a JSON payload; None when it holds none. ``strict``: the text was marked as a call,
    so unreadable JSON is a malformed call rather than ordinary prose."""
    try:
        values = _decode_values(payload)
    except json.JSONDecodeError as exc:
        if strict:
            return [ToolCall("", {}, error=f"the model wrote a malformed tool call ({exc.msg}): {payload[:200]}",
                             id=new_call_id())]
        return None
    objects = [o for v in values for o in (v if isinstance(v, list) else [v])]
    calls = [as_call(o, names) for o in objects]
    if not calls or any(c is None for c in calls):
        if strict:
            return [ToolCall("", {}, error=f"the model wrote a tool call without a name: {payload[:200]}",
                             id=new_call_id())]
        return None
    return [c for c in calls if c is not None]


def parse_tool_calls(text: str, names: Sequence[str] | None = None) -> tuple[str, list[ToolCall]]:
    """(the text without its tool calls, the calls) from a model's output.

    A call to a name not in ``names``, or one whose JSON cannot be read, is returned with ``error``
    set, so the tool loop can tell the model what was wrong instead of silently ignoring it.
    """
    if "<tool_call>" in text:
        calls = [c for m in HERMES.finditer(text) for c in (_calls_in(m.group(1), names, True) or [])]
        return HERMES.sub("", text).strip(), calls
    for marker in ("[TOOL_CALLS]", "<|python_tag|>"):
        if marker in text:
            before, _, payload = text.partition(marker)
            return before.strip(), _calls_in(payload, names, True) or []
    match = FUNCTIONS.search(text)
    if match:
        try:
            arguments = json.JSONDecoder().raw_decode(match.group(2))[0]
        except json.JSONDecodeError as exc:
            arguments = f"malformed: {exc.msg}"
        call = as_call({"name": match.group(1), "arguments": arguments}, names)
        if isinstance(arguments, str):
            call = ToolCall(match.group(1), {}, error=f"the model wrote malformed arguments for "
                            f"{match.group(1)}: {match.group(2)[:200]}", id=new_call_id())
        return text[: match.start()].strip(), [call] if call else []
    for match in FENCED.finditer(text):
        calls = _calls_in(match.group(1), names, False)
        if calls:
            return (text[: match.start()] + text[match.end():]).strip(), calls
    stripped = text.strip()
    if stripped[:1] in "{[":
        calls = _calls_in(stripped, names, False)
        if calls:
            return "", calls
    return text, []


# --- rendering for templates without tool support ---------------------------------------------------

def template_knows_tools(template: str | None) -> bool:
    """Whether a Jinja chat template renders ``tools`` (Qwen, Hermes, Llama 3.1, Mistral do)."""
    return bool(template) and "tools" in template


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t["function"]) for t in tools)
    return ("You can call functions. To call one, answer with only\n"
            '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>\n'
            "and nothing else. The functions are:\n<tools>\n" + listed + "\n</tools>")


def call_text(call: dict[str, Any]) -> str:
    """An OpenAI ``tool_calls`` entry as the Hermes text a model would have written."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return CALL_OPEN + json.dumps({"name": function.get("name"), "arguments": arguments}) + CALL_CLOSE


def plain_messages(messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[Message]:
    """Messages any chat template can render: the tools go into the system prompt, calls into the
    assistant's text, and results into user turns wrapped in ``<tool_response>``."""
    out: list[Message] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            content = "\n".join(([message["content"]] if message.get("content") else [])
                                + [call_text(c) for c in message["tool_calls"]])
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            body = json.dumps({"name": message.get("name"), "content": content})
            out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


# --- forced calls: structure from the schema, values from the model ---------------------------------

Complete = Callable[[str, tuple[str, ...], int], str]  # (text, stop strings, max tokens) -> continuation
Choose = Callable[[str, list[str]], int]  # (context, options) -> index of the likeliest option
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class CompleteStep:
    """A forced call needs the model's continuation of ``text`` up to a stop string."""

    text: str
    stop: tuple[str, ...]
    max_tokens: int


@dataclass(frozen=True)
class ChooseStep:
    """A forced call needs the index of the likeliest of ``options`` after ``context``."""

    context: str
    options: list[str]


Step = Union[CompleteStep, ChooseStep]
Steps = Generator[Step, Any, ToolCall]  # yields what it needs of the model; is sent the answer


def forced_call(prompt: str, tools: Sequence[dict[str, Any]], name: str | None,
                complete: Complete, choose: Choose) -> ToolCall:
    """Write a call to ``name`` (or, with None, to the tool the model finds likeliest) after ``prompt``,
    asking ``complete`` and ``choose`` one step at a time (see :func:`forced_steps`)."""
    steps = forced_steps(prompt, tools, name)
    answer: Any = None
    try:
        while True:
            step = steps.send(answer)
            answer = (complete(step.text, step.stop, step.max_tokens) if isinstance(step, CompleteStep)
                      else choose(step.context, step.options))
    except StopIteration as done:
        return done.value


def forced_steps(prompt: str, tools: Sequence[dict[str, Any]], name: str | None) -> Steps:
    """The steps of a forced call: a generator that yields each thing it needs of the model (a
    :class:`ChooseStep` or a :class:`CompleteStep`), is sent the answer, and returns the call. A backend
    drives the steps of many calls side by side, batching the same step of every call.

    Every required argument is filled in the schema's order: enums and booleans by likelihood, numbers
    and strings by generation up to the value's end. A value the model cannot produce (no number where
    one is needed) becomes the call's ``error``, which the tool loop reports back to the model.
    """
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    text = prompt + CALL_OPEN + '{"name": "'
    if name is None:
        names = list(by_name)
        name = names[(yield ChooseStep(text, [n + '"' for n in names]))] if len(names) > 1 else names[0]
    function = by_name[name]
    text += name + '", "arguments": {'
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = [p for p in parameters.get("required", list(properties)) if p in properties]
    arguments: dict[str, Any] = {}
    for k, key in enumerate(required):
        text += (", " if k else "") + json.dumps(key) + ": "
        try:
            value = yield from _value_steps(text, properties[key])
        except ValueError as exc:
            return ToolCall(name, arguments, error=f"the model gave no valid value for {key}: {exc}", id=new_call_id())
        arguments[key] = value
        text += json.dumps(value)
    return ToolCall(name, arguments, id=new_call_id())


def _value_steps(text: str, schema: dict[str, Any]) -> Generator[Step, Any, Any]:
    kind = schema.get("type")
    if "enum" in schema:
        options = list(schema["enum"])
        return options[(yield ChooseStep(text, [json.dumps(o) for o in options]))]
    if kind == "boolean":
        return [True, False][(yield ChooseStep(text, ["true", "false"]))]
    if kind in ("integer", "number"):
        raw = yield CompleteStep(text, (",", "}", "\n"), 16)
        match = NUMBER.search(raw)
        if match is None:
            raise ValueError(f"expected a number, got {raw.strip()[:40]!r}")
        number = float(match.group())
        return int(number) if kind == "integer" and number == int(number) else number
    if kind == "string":
        raw = yield CompleteStep(text + '"', ('"', "\n"), 48)
        return raw.split('"')[0]
    raw = yield CompleteStep(text, ("\n",), 64)  # arrays, objects, unions: the model writes the JSON
    try:
        return json.JSONDecoder().raw_decode(raw.strip())[0]
    except json.JSONDecodeError as exc:
        raise ValueError(f"unreadable JSON {raw.strip()[:40]!r} ({exc.msg})") from None

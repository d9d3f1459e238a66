"""Python functions as tools: a JSON schema (OpenAI's function format) from type hints and the
docstring (Google or NumPy style argument sections), and calling a function with a model's arguments.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin

from .backends.base import ToolCall

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def json_type(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (str, int, float, bool, list[...], dict, Literal, Optional)."""
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and next(iter(kinds)) in _SIMPLE:
            schema["type"] = _SIMPLE[next(iter(kinds))]
        return schema
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) or hint in (list, tuple, set):
        return {"type": "array", **({"items": json_type(args[0])} if args else {})}
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return {"type": "object"}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return json_type(options[0])
        return {"anyOf": [json_type(a) for a in options]}
    return {}  # Any or an unknown class: no constraint


_GOOGLE_ARGS = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$", re.I)
_NUMPY_HEADER = re.compile(r"^\s*Parameters\s*$", re.I)
_SECTION = re.compile(r"^\s*(Returns?|Raises|Yields|Examples?|Notes?|See Also|Attributes)\s*:?\s*$", re.I)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) from a Google- or NumPy-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    i = 0
    while i < len(lines) and not (_GOOGLE_ARGS.match(lines[i]) or _NUMPY_HEADER.match(lines[i])
                                  or _SECTION.match(lines[i])):
        description.append(lines[i])
        i += 1
    numpy = i < len(lines) and _NUMPY_HEADER.match(lines[i]) is not None
    if i < len(lines) and (numpy or _GOOGLE_ARGS.match(lines[i])):
        i += 1
        if numpy and i < len(lines) and set(lines[i].strip()) == {"-"}:
            i += 1
        current = None
        while i < len(lines) and not _SECTION.match(lines[i]):
            line = lines[i]
            if numpy:
                match = re.match(r"^(\w+)\s*(:.*)?$", line)
                if match and not line.startswith((" ", "\t")):
                    current = match.group(1)
                    arguments[current] = ""
                elif current and line.strip():
                    arguments[current] = (arguments[current] + " " + line.strip()).strip()
            else:
                match = re.match(r"^\s{0,4}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
                if match:
                    current = match.group(1)
                    arguments[current] = match.group(3).strip()
                elif current and line.strip():
                    arguments[current] = (arguments[current] + " " + line.strip()).strip()
            i += 1
    return " ".join(part.strip() for part in description if part.strip()), arguments


@dataclass(frozen=True)
class Tool:
    function: Callable[..., Any]
    schema: dict[str, Any]  # {"type": "function", "function": {...}}

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    def call(self, arguments: dict[str, Any]) -> ToolCall:
        """Run the function; its exception becomes the call's error, returned to the model."""
        try:
            return ToolCall(self.name, arguments, self.function(**arguments), None)
        except Exception as exc:  # the model asked badly or the tool failed: tell the model
            return ToolCall(self.name, arguments, None, f"{type(exc).__name__}: {exc}")


def tool(function: Callable[..., Any]) -> Tool:
    """A tool from a plain function: name, description and parameters from its signature and docstring."""
    __tracebackhide__ = True
    if not callable(function) or not getattr(function, "__name__", None):
        raise TypeError(f"tools are plain functions with a name, got {function!r}")
    description, argument_docs = parse_docstring(function.__doc__)
    hints = typing.get_type_hints(function)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        schema = json_type(hints.get(name, Any))
        if argument_docs.get(name):
            schema["description"] = argument_docs[name]
        properties[name] = schema
        if parameter.default is parameter.empty:
            required.append(name)
    return Tool(function, {
        "type": "function",
        "function": {
            "name": function.__name__,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    })

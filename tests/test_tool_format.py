"""Tool calls as text: the parser's formats, rendering for plain templates, forced calls field by field."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from pytest_evals.backends.base import ChatRequest
from pytest_evals.backends.template_chat import template_messages
from pytest_evals.backends.tool_format import forced_call, parse_tool_calls, plain_messages
from pytest_evals.tools import tool

NAMES = ["add", "lookup"]


def add(a: int, b: int) -> int:
    """Add."""
    return a + b


def lookup(country: str, field: str = "capital") -> str:
    """Look up a fact."""
    return "Paris"


def simple(calls):
    return [(c.name, c.arguments, c.error) for c in calls]


@pytest.mark.parametrize("text, content, calls", [
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "", [("add", {"a": 1, "b": 2}, None)]),
    ('Sure.<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
     '<tool_call>{"name": "lookup", "arguments": {"country": "France"}}</tool_call>', "Sure.",
     [("add", {"a": 1, "b": 2}, None), ("lookup", {"country": "France"}, None)]),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}', "", [("add", {"a": 1, "b": 2}, None)]),  # unclosed
    ('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 5, "b": 6}}]', "", [("add", {"a": 5, "b": 6}, None)]),
    ('<|python_tag|>{"name": "lookup", "parameters": {"country": "Peru"}}', "", [("lookup", {"country": "Peru"}, None)]),
    ('functions.add:\n{"a": 3, "b": 4}', "", [("add", {"a": 3, "b": 4}, None)]),
    ('Here:\n```json\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}\n```', "Here:", [("add", {"a": 1, "b": 1}, None)]),
    ('{"name": "add", "arguments": {"a": 9, "b": 1}}', "", [("add", {"a": 9, "b": 1}, None)]),
    ('[{"name": "add", "arguments": {"a": 9, "b": 1}}, {"name": "lookup", "arguments": {"country": "Chad"}}]', "",
     [("add", {"a": 9, "b": 1}, None), ("lookup", {"country": "Chad"}, None)]),
])
def test_formats_are_parsed(text, content, calls) -> None:
    got_content, got_calls = parse_tool_calls(text, NAMES)
    assert got_content == content and simple(got_calls) == calls
    assert all(c.id for c in got_calls)


@pytest.mark.parametrize("text", ["The answer is 42.", '{"answer": 42}', "Use {braces} freely", "```python\nx = 1\n```"])
def test_prose_and_other_json_are_not_calls(text) -> None:
    assert parse_tool_calls(text, NAMES) == (text, [])


def test_malformed_and_unknown_calls_come_back_as_errors() -> None:
    _, (bad,) = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>', NAMES)
    assert bad.error.startswith("the model wrote a malformed tool call")
    _, (unknown,) = parse_tool_calls('<tool_call>{"name": "mul", "arguments": {}}</tool_call>', NAMES)
    assert unknown.error == "there is no tool named 'mul'; the tools are add, lookup"
    _, (args,) = parse_tool_calls('{"name": "add", "arguments": "{not json"}', NAMES)
    assert args.name == "add" and args.error.startswith("the model wrote malformed arguments for add")


def test_plain_rendering_puts_tools_calls_and_results_in_text() -> None:
    schema = tool(add).schema
    messages = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "x", "name": "add", "content": "3"},
    ]
    out = plain_messages(messages, [schema])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be exact.\n\nYou can call functions.")
    assert json.dumps(schema["function"]) in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'}
    assert out[3]["role"] == "user" and '"content": "3"' in out[3]["content"]
    # what the model is shown as its own earlier call, the parser reads back
    assert simple(parse_tool_calls(out[2]["content"], NAMES)[1]) == [("add", {"a": 1, "b": 2}, None)]
    # transformers templates want the arguments as a dict
    assert template_messages(messages)[2]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}
    assert template_messages(messages)[2]["content"] == ""


class Scripted:
    """A stand-in model for forced_call: scripted continuations, and choices by a fixed preference."""

    def __init__(self, continuations: list[str], prefer: str | None = None) -> None:
        self.continuations = continuations
        self.prompts: list[tuple[str, tuple[str, ...]]] = []
        self.prefer = prefer

    def complete(self, text: str, stop: tuple[str, ...], max_tokens: int) -> str:
        self.prompts.append((text, stop))
        out = self.continuations.pop(0)
        cut = min([out.find(s) for s in stop if s in out], default=len(out))
        return out[:cut]

    def choose(self, context: str, options: list[str]) -> int:
        return next((i for i, o in enumerate(options) if self.prefer and self.prefer in o), 0)


def test_a_forced_call_is_written_field_by_field_from_the_schema() -> None:
    model = Scripted([" 12, and more", "30}"])
    call = forced_call("PROMPT", [tool(add).schema, tool(lookup).schema], "add", model.complete, model.choose)
    assert (call.name, call.arguments, call.error) == ("add", {"a": 12, "b": 30}, None)
    assert model.prompts[0][0] == 'PROMPT<tool_call>\n{"name": "add", "arguments": {"a": '
    assert model.prompts[1][0].endswith('{"a": 12, "b": ')


def test_required_picks_the_likeliest_tool_and_strings_stop_at_the_quote() -> None:
    model = Scripted(['France" is it'], prefer="lookup")
    call = forced_call("P", [tool(add).schema, tool(lookup).schema], None, model.complete, model.choose)
    assert (call.name, call.arguments) == ("lookup", {"country": "France"})  # optional `field` is left out
    assert model.prompts[0][0].endswith('"arguments": {"country": "')


def test_enums_and_booleans_are_chosen_and_a_missing_number_is_the_calls_error() -> None:
    def convert(value: float, unit: Literal["km", "mi"], exact: bool) -> float:
        """Convert."""
        return value

    model = Scripted(["abc"], prefer="mi")
    call = forced_call("P", [tool(convert).schema], "convert", model.complete, model.choose)
    assert call.error == "the model gave no valid value for value: expected a number, got 'abc'"
    model = Scripted(["2.5,"], prefer="mi")
    call = forced_call("P", [tool(convert).schema], "convert", model.complete, model.choose)
    assert call.arguments == {"value": 2.5, "unit": "mi", "exact": True}


def test_forced_tool_of_a_request() -> None:
    schemas = (tool(add).schema, tool(lookup).schema)
    assert ChatRequest((), tools=schemas, tool_choice="lookup").forced_tool == "lookup"
    assert ChatRequest((), tools=schemas, tool_choice="required").forced_tool is None  # the model picks
    assert ChatRequest((), tools=schemas[:1], tool_choice="required").forced_tool == "add"
    assert ChatRequest((), tools=schemas, tool_choice="auto").forced_tool is None

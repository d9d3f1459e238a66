"""The tool loop, tool_choice, trimming and recording, with a scripted backend (plugin logic only;
the real backends are exercised in test_tool_backends.py)."""

from __future__ import annotations

import json
from typing import Callable

import pytest
from conftest import rows

from pytest_evals.backends.base import Backend, BackendSettings, ChatRequest, ContextOverflow, Reply, ToolCall
from pytest_evals.backends.specs import parse_spec
from pytest_evals.calls.model import Model


class Scripted(Backend):
    """Answers each chat request with the next scripted step: a Reply, or a function of the request."""

    capabilities = frozenset({"chat", "tools"})

    def __init__(self, *steps: Reply | Callable[[ChatRequest], Reply], window: int | None = None) -> None:
        super().__init__(parse_spec("openai:scripted@http://127.0.0.1:1/v1"), BackendSettings())
        self.steps = list(steps)
        self.requests: list[ChatRequest] = []
        self.window = window

    def chat(self, requests):
        self.requests.extend(requests)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return [step(r) if callable(step) else step for r in requests]

    def context_window(self):
        return self.window

    def count_chat_tokens(self, request):  # one token per character of content
        return sum(len(m.get("content") or "") for m in request.messages)


def asks(name: str, **arguments) -> Reply:
    return Reply(text="", tool_calls=(ToolCall(name, arguments, id=f"id-{name}"),), finish_reason="tool_calls")


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def test_the_loop_runs_the_tool_and_sends_the_result_back() -> None:
    backend = Scripted(asks("add", a=2, b=3), lambda r: Reply(text=f"it is {r.messages[-1]['content']}"))
    model = Model(backend, calls := [])
    reply = model.chat("what is 2+3?", tools=[add])
    assert reply.text == "it is 5"
    assert reply.tool_calls == (ToolCall("add", {"a": 2, "b": 3}, 5, None, "id-add", reply.tool_calls[0].duration_s),)
    second = backend.requests[1].messages
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]
    assert second[1]["tool_calls"] == [{"id": "id-add", "type": "function",
                                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    assert second[2] == {"role": "tool", "tool_call_id": "id-add", "name": "add", "content": "5"}
    assert backend.requests[0].tools[0]["function"]["parameters"]["properties"]["a"] == {
        "type": "integer", "description": "the first"}
    assert [c.kind for c in calls] == ["chat", "chat"] and all(c.conversation == 1 for c in calls)
    assert "-> add" in calls[0].output_text


def test_a_failing_tool_and_an_unknown_tool_are_errors_the_model_reads() -> None:
    backend = Scripted(asks("divide", a=1, b=0), asks("nope"), Reply(text="sorry"))
    conversation = Model(backend, []).conversation(tools=[divide])
    reply = conversation.say("divide 1 by 0")
    assert reply.text == "sorry"
    first, second = reply.tool_calls
    assert first.error == "ZeroDivisionError: division by zero" and first.result is None
    assert second.error.startswith("there is no tool named 'nope'")
    tool_messages = [m for m in conversation.messages if m["role"] == "tool"]
    assert tool_messages[0]["content"] == "error: ZeroDivisionError: division by zero"
    assert conversation.tool_calls == list(reply.tool_calls)


def test_rounds_are_limited_and_the_last_round_must_answer_in_words() -> None:
    def always_asks(request: ChatRequest) -> Reply:
        return Reply(text="done") if request.tool_choice == "none" else asks("add", a=1, b=1)

    backend = Scripted(always_asks)
    reply = Model(backend, []).chat("loop", tools=[add], max_rounds=3)
    assert reply.text == "done" and len(reply.tool_calls) == 3
    assert [r.tool_choice for r in backend.requests] == ["auto", "auto", "auto", "none"]


def test_a_forced_tool_is_forced_once_per_user_turn() -> None:
    backend = Scripted(asks("add", a=1, b=2), Reply(text="3"), asks("add", a=2, b=2), Reply(text="4"))
    conversation = Model(backend, []).conversation(tools=[add, divide], tool_choice="add")
    conversation.say("one plus two")
    conversation.say("two plus two")
    assert [r.tool_choice for r in backend.requests] == ["add", "auto", "add", "auto"]
    assert [c.result for c in conversation.tool_calls] == [3, 4]


def test_tool_choice_none_sends_the_tools_but_runs_nothing() -> None:
    backend = Scripted(asks("add", a=1, b=2))  # a server that ignored "none": its calls are not run
    reply = Model(backend, []).chat("hi", tools=[add], tool_choice="none")
    assert reply.tool_calls == () and backend.requests[0].tool_choice == "none"


@pytest.mark.parametrize("tools, choice, message", [
    ([add], "subtract", "tool_choice='subtract': expected 'auto', 'none', 'required' or a tool's name (add)"),
    ([], "required", 'tool_choice="required" needs tools=[...]'),
    ([add, add], "auto", "two tools share a name: add"),
])
def test_bad_tool_arguments_are_one_clear_error(tools, choice, message) -> None:
    with pytest.raises(ValueError) as excinfo:
        Model(Scripted(Reply(text="")), []).chat("hi", tools=tools, tool_choice=choice)
    assert str(excinfo.value) == message


def test_history_keeps_openai_format_across_turns() -> None:
    backend = Scripted(lambda r: Reply(text=f"heard {r.messages[-1]['content']}"))
    conversation = Model(backend, []).conversation(system="be brief")
    conversation.say("a")
    reply = conversation.say("b")
    assert reply.text == "heard b"
    assert conversation.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "heard a"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "heard b"},
    ]
    assert backend.requests[1].messages == tuple(conversation.messages[:-1])


def test_oldest_turns_are_dropped_to_fit_the_window_and_the_trimming_is_recorded() -> None:
    backend = Scripted(lambda r: Reply(text="ok"), window=40)
    model = Model(backend, calls := [])
    conversation = model.conversation(system="sys", max_tokens=10)  # 40 - 10: 30 characters of history
    for text in ("first message.", "second message", "third message."):
        conversation.say(text)
    # before the third call: sys(3) + 14+2 + 14+2 + 14 = 49 > 30, so the first two turns went
    assert [m["content"] for m in backend.requests[-1].messages] == ["sys", "third message."]
    assert [m["content"] for m in conversation.dropped] == ["first message.", "ok", "second message", "ok"]
    assert [c.dropped_messages for c in calls] == [0, 2, 4]
    dropped = [t.content for t in model.transcript.turns if t.dropped]
    assert dropped == ["first message.", "ok", "second message", "ok"]
    assert model.transcript.turns[0].role == "system" and not model.transcript.turns[0].dropped


def test_a_context_overflow_from_the_server_drops_a_turn_and_asks_again() -> None:
    def strict(request: ChatRequest) -> Reply:
        if len(request.messages) > 2:
            raise ContextOverflow("too long", window=99)
        return Reply(text="ok")

    backend = Scripted(strict)
    conversation = Model(backend, []).conversation()
    conversation.say("one")
    reply = conversation.say("two")
    assert reply.text == "ok" and [m["content"] for m in conversation.messages] == ["two", "ok"]
    assert conversation.context_window == 99


def test_the_last_turn_alone_too_long_is_the_servers_error() -> None:
    def strict(request: ChatRequest) -> Reply:
        raise ContextOverflow("too long")

    conversation = Model(Scripted(strict), []).conversation()
    with pytest.raises(Exception, match="too long"):
        conversation.say("x" * 100)


def test_turns_and_tool_calls_reach_sqlite_tied_to_their_case(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_t='''
        def add(a: int, b: int) -> int:
            """Add."""
            return a + b

        def test_tools(model):
            reply = model.chat('call add {"a": 2, "b": 40}', tools=[add])
            assert reply.text == "the answer is 42"
            assert reply.tool_calls[0].result == 42

        def test_talk(model):
            chat = model.conversation(system="s")
            assert chat.say("abc").text == "cba"
            assert chat.say("xy").text == "yx"
    ''')
    result = fake_project.runpytest("--model=fake:m", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    cases = dict(rows(fake_project, "SELECT id, nodeid FROM cases"))
    by_name = {nodeid.split("::")[1].split("[")[0]: case_id for case_id, nodeid in cases.items()}
    turns = rows(fake_project, "SELECT case_id, conversation, role, content, tool_calls, tool_call_id FROM turns ORDER BY id")
    assert [(r[0], r[2], r[3]) for r in turns if r[0] == by_name["test_talk"]] == [
        (by_name["test_talk"], "system", "s"), (by_name["test_talk"], "user", "abc"),
        (by_name["test_talk"], "assistant", "cba"), (by_name["test_talk"], "user", "xy"),
        (by_name["test_talk"], "assistant", "yx")]
    tool_turns = [r for r in turns if r[0] == by_name["test_tools"]]
    assert [r[2] for r in tool_turns] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(tool_turns[1][4])[0]["function"]["name"] == "add" and tool_turns[2][5] == "c1"
    (tool_row,) = rows(fake_project, "SELECT case_id, name, arguments, result, error, duration_s FROM tool_calls")
    assert tool_row[:5] == (by_name["test_tools"], "add", '{"a": 2, "b": 40}', "42", None)
    assert tool_row[5] >= 0
    assert rows(fake_project, "SELECT count(*), count(DISTINCT case_id || '/' || conversation) FROM calls WHERE kind = 'chat'") == [(4, 2)]


def test_a_resumed_case_keeps_its_turns_and_tool_calls(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_t='''
        def add(a: int, b: int) -> int:
            """Add."""
            return a + b

        def test_tools(model):
            assert model.chat('call add {"a": 1, "b": 2}', tools=[add]).text == "the answer is 3"
    ''')
    fake_project.runpytest("--model=fake:m", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = fake_project.runpytest("--model=fake:m", "-p", "no:cacheprovider", "--evals-resume", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PASSED (resumed)*"])
    per_run = rows(fake_project, "SELECT run_id, count(*) FROM turns GROUP BY run_id")
    assert per_run == [(1, 4), (2, 4)]
    assert rows(fake_project, "SELECT run_id, name, result FROM tool_calls ORDER BY run_id") == [
        (1, "add", "3"), (2, "add", "3")]


def test_render_passes_tools_to_a_template_that_knows_them() -> None:
    from pytest_evals.backends.template_chat import render_chat
    from pytest_evals.tools import tool

    class Tokenizer:
        chat_template = "{% if tools %}{{ tools }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"

        def apply_chat_template(self, messages, **kwargs):
            self.seen = (messages, kwargs)
            return "rendered"

    tokenizer = Tokenizer()
    messages = ({"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "x", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]})
    render_chat(tokenizer, ChatRequest(messages, tools=(tool(add).schema,)))
    sent, kwargs = tokenizer.seen
    assert kwargs["tools"] == [tool(add).schema] and kwargs["add_generation_prompt"] is True
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}  # a dict for the template
    render_chat(tokenizer, ChatRequest(messages, tools=(tool(add).schema,), tool_choice="none"))
    assert tokenizer.seen[1]["tools"] is None

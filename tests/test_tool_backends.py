"""Tool calling and conversations on real backends: the llama.cpp server (OpenAI API, started with
``--chat_format chatml-function-calling``) and the embedded default through transformers."""

from __future__ import annotations

import pytest

from pytest_evals.backends.base import BackendSettings, ChatRequest
from pytest_evals.backends.specs import parse_spec
from pytest_evals.calls.model import Model
from pytest_evals.tools import tool


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def server_backend(llama_tools_server):
    from pytest_evals.backends.openai import OpenAIBackend

    backend = OpenAIBackend(parse_spec(f"openai:smollm2@{llama_tools_server}"), BackendSettings(timeout_s=120))
    yield backend
    backend.close()


# --- the OpenAI-compatible server ------------------------------------------------------------------

def test_server_forced_tool_is_streamed_and_run(server_backend) -> None:
    model = Model(server_backend, calls := [])
    reply = model.chat("What is 12 plus 30?", tools=[add], tool_choice="add", max_tokens=48, max_rounds=1)
    call = reply.tool_calls[0]
    assert call.name == "add" and call.error is None
    assert set(call.arguments) == {"a", "b"} and call.result == call.arguments["a"] + call.arguments["b"]
    assert call.id and calls[0].ttft_s is not None  # the call arrived as streamed deltas
    assert server_backend.fleet.lanes[0].item.stream_tools  # no fallback was needed


def test_server_required_with_one_tool_is_that_tool(server_backend) -> None:
    reply = Model(server_backend, []).chat("Weather in Oslo?", tools=[weather], tool_choice="required",
                                           max_tokens=32, max_rounds=1)
    assert [c.name for c in reply.tool_calls] == ["weather"] and isinstance(reply.tool_calls[0].result, str)


def test_server_automatic_choice_falls_back_to_an_unstreamed_request(llama_tools_server) -> None:
    """llama-cpp-python cannot stream an automatic tool choice: the backend asks again unstreamed."""
    from pytest_evals.backends.openai import OpenAIBackend

    backend = OpenAIBackend(parse_spec(f"openai:smollm2@{llama_tools_server}"), BackendSettings(timeout_s=120))
    messages = [{"role": "system", "content": "Use the tools."},
                {"role": "user", "content": "Call the weather function for Paris."}]
    reply = Model(backend, []).chat(messages, tools=[weather, add], max_tokens=48, max_rounds=1)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("weather", {"city": "Paris"})]
    assert reply.tool_calls[0].result == "sunny in Paris"
    assert not backend.fleet.lanes[0].item.stream_tools
    backend.close()


def test_server_context_overflow_trims_the_oldest_turn(server_backend) -> None:
    conversation = Model(server_backend, []).conversation(system="Answer in one word.", max_tokens=8)
    filler = "Remember this list: " + ", ".join(f"item {i}" for i in range(300)) + "."  # ~1200 tokens
    conversation.say(filler)
    reply = conversation.say(filler.replace("item", "thing"))  # both turns together pass n_ctx=2048
    assert reply.finish_reason in ("stop", "length")
    assert [m["role"] for m in conversation.dropped] == ["user", "assistant"]
    assert conversation.messages[0]["role"] == "system" and conversation.context_window == 2048


def test_server_tool_use_through_the_plugin_is_recorded(pytester: pytest.Pytester, llama_tools_server) -> None:
    from conftest import rows

    pytester.makepyfile(test_tools='''
        def add(a: int, b: int) -> int:
            """Add two integers."""
            return a + b

        def test_add(model):
            chat = model.conversation(tools=[add], tool_choice="add", max_tokens=32, max_rounds=1)
            reply = chat.say("What is 2 plus 3?")
            assert chat.tool_calls[0].name == "add"
    ''')
    result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{llama_tools_server}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert rows(pytester, "SELECT name, error FROM tool_calls") == [("add", None)]
    assert [r[0] for r in rows(pytester, "SELECT role FROM turns ORDER BY id")][:3] == ["user", "assistant", "tool"]


# --- the embedded default through transformers ----------------------------------------------------

def test_hf_forced_tool_is_well_formed_and_right(smollm2) -> None:
    reply = Model(smollm2, []).chat("What is 12 plus 30?", tools=[add], tool_choice="add", max_tokens=32)
    call = reply.tool_calls[0]
    assert (call.name, call.arguments, call.result, call.error) == ("add", {"a": 12, "b": 30}, 42, None)


def test_hf_required_picks_a_tool_and_fills_its_schema(smollm2) -> None:
    reply = Model(smollm2, []).chat("What is the weather like in Rome?", tools=[add, weather],
                                    tool_choice="required", max_tokens=32)
    call = reply.tool_calls[0]
    assert call.error is None and call.name in ("add", "weather")
    schema = tool({"add": add, "weather": weather}[call.name]).schema["function"]["parameters"]
    assert set(call.arguments) == set(schema["required"])
    kinds = {"integer": int, "string": str}
    assert all(isinstance(call.arguments[k], kinds[schema["properties"][k]["type"]]) for k in call.arguments)


def test_hf_renders_tools_for_a_template_without_them(smollm2) -> None:
    request = ChatRequest(({"role": "user", "content": "hi"},), tools=(tool(add).schema,))
    prompt = smollm2.chat_prompt(request)
    assert "<tools>" in prompt and '"name": "add"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "<tools>" not in smollm2.chat_prompt(ChatRequest(request.messages, tools=request.tools, tool_choice="none"))


def test_hf_conversation_trims_to_the_window_with_the_real_tokenizer(smollm2) -> None:
    conversation = Model(smollm2, calls := []).conversation(system="Be brief.", max_tokens=8, context_window=80)
    for fact in ("The sky is blue today.", "My cat is called Tom.", "I live in a small town by the sea."):
        conversation.say(fact + " Please remember it and reply with OK.")
    assert conversation.dropped and conversation.messages[0] == {"role": "system", "content": "Be brief."}
    last = ChatRequest(tuple(conversation.messages[:-1]), max_tokens=8)
    assert smollm2.count_chat_tokens(last) + 8 <= 80
    assert calls[-1].dropped_messages == len(conversation.dropped)


def test_hf_choice_with_a_shared_cache_agrees_with_loglikelihood(smollm2) -> None:
    from pytest_evals.backends.base import LoglikelihoodRequest

    context = 'Convert 5 kilometers to meters.\n{"from_unit": '
    for options in (['"km"', '"m"', '"cm"', '"mi"'], [" yes", " no, not at all", " maybe"]):
        scores = [r.logprob for r in smollm2.loglikelihood([LoglikelihoodRequest(context, o) for o in options])]
        assert smollm2._choose(context, options) == scores.index(max(scores))

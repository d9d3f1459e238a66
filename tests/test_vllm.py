"""The vLLM adapter's logic, with a scripted stand-in for the `vllm` module (vLLM needs CUDA).

The stand-in only mirrors the shapes of vLLM's objects (RequestOutput, CompletionOutput, Logprob);
the real engine is exercised by the gpu-marked test at the end, which skips without a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field

import pytest

from pytest_evals.backends.base import BackendSettings, ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.backends.specs import SpecError, parse_spec


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    stop: list | None = None
    prompt_logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int


@dataclass
class Completion:
    text: str
    token_ids: list
    finish_reason: str = "length"


@dataclass
class Metrics:
    arrival_time: float
    first_token_time: float
    last_token_time: float | None = None


@dataclass
class Output:
    prompt_token_ids: list
    outputs: list
    metrics: Metrics | None = None
    prompt_logprobs: list | None = None


class Tokenizer:
    bos_token_id = 1
    eos_token_id = 2
    chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"  # knows no tools

    def encode(self, text, add_special_tokens=False):
        return [ord(ch) for ch in text]  # one token per character

    def __call__(self, text, add_special_tokens=False):
        return types.SimpleNamespace(input_ids=self.encode(text))

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, **kwargs):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


@dataclass
class LLM:
    model: str = ""
    kwargs: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []

    def get_tokenizer(self):
        return Tokenizer()

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(("generate", prompts, params))
        if isinstance(params, SamplingParams) and params.prompt_logprobs is not None:
            outs = []
            for p in prompts:
                ids = p["prompt_token_ids"]
                # logprob of token t at position i: -(i / 10); rank 1 only for even ids
                lp = [None] + [{t: Logprob(-i / 10, 1 if t % 2 == 0 else 3)} for i, t in enumerate(ids[1:], 1)]
                outs.append(Output(ids, [Completion("x", [5])], None, lp))
            return outs
        return [Output([1, 2, 3], [Completion(p.upper() + " END more", [7, 8, 9, 10])],
                       Metrics(100.0, 100.25, 100.25 + 0.5 * (i + 1))) for i, p in enumerate(prompts)]

    def chat(self, conversations, params, use_tqdm=True, **kwargs):
        self.calls.append(("chat", conversations, params, kwargs))
        outputs = []
        for c in conversations:
            last = c[-1]["content"]
            # a user turn that starts with "call" gets a Hermes-format call, like an open model writes
            text = ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
                    if "call" in last else last[::-1])
            outputs.append(Output([1], [Completion(text, [4, 5], "stop")], None))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def make(spec: str = "vllm:/models/smol?tensor_parallel_size=2"):
    from pytest_evals.backends.vllm import VLLMBackend

    return VLLMBackend(parse_spec(spec), BackendSettings())


def test_check_names_the_extra_when_vllm_is_missing() -> None:
    from pytest_evals.backends.vllm import VLLMBackend

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(SpecError, match=r"needs vllm; install with: pip install 'pytest-llm-evals\[vllm\]'"):
        VLLMBackend.check(parse_spec("vllm:ORG/NAME"))


def test_engine_gets_spec_options_and_keeps_request_metrics(fake_vllm) -> None:
    backend = make()
    assert backend.llm.model == "/models/smol"
    assert backend.llm.kwargs == {"tensor_parallel_size": 2, "disable_log_stats": False}


def test_generate_is_one_engine_call_per_batch_with_per_request_params(fake_vllm) -> None:
    backend = make()
    replies = backend.generate([GenerateRequest("ab", max_tokens=4, stop=(" END",)),
                                GenerateRequest("cd", max_tokens=9, temperature=0.5)])
    ((kind, prompts, params),) = backend.llm.calls
    assert kind == "generate" and prompts == ["ab", "cd"]
    assert [(p.max_tokens, p.temperature, p.stop) for p in params] == [(4, 0.0, [" END"]), (9, 0.5, None)]
    assert [r.text for r in replies] == ["AB", "CD END more"]
    assert replies[0].prompt_tokens == 3 and replies[0].completion_tokens == 4
    assert replies[0].ttft_s == pytest.approx(0.25)
    # each request's own time to its last token from the engine's metrics, not the batch's
    assert [r.latency_s for r in replies] == [pytest.approx(0.75), pytest.approx(1.25)]
    assert replies[1].tpot_s == pytest.approx((1.25 - 0.25) / 3)


def test_chat_goes_through_the_chat_api(fake_vllm) -> None:
    backend = make()
    (reply,) = backend.chat([ChatRequest(({"role": "user", "content": "hello"},), max_tokens=5)])
    assert reply.text == "olleh" and reply.finish_reason == "stop"
    assert backend.llm.calls[0][0] == "chat"


def add(a: int, b: int) -> int:
    """Add."""
    return a + b


def test_chat_with_tools_parses_the_calls_and_groups_requests_by_tools(fake_vllm) -> None:
    from pytest_evals.tools import tool

    backend = make()
    schemas = (tool(add).schema,)
    replies = backend.chat([ChatRequest(({"role": "user", "content": "call add"},), tools=schemas),
                            ChatRequest(({"role": "user", "content": "plain"},)),
                            ChatRequest(({"role": "user", "content": "call it"},), tools=schemas)])
    assert [(c.name, c.arguments) for c in replies[0].tool_calls] == [("add", {"a": 1, "b": 2})]
    assert replies[0].finish_reason == "tool_calls" and replies[0].text == ""
    assert replies[1].text == "nialp" and replies[1].tool_calls == ()
    assert replies[2].tool_calls[0].name == "add"
    chats = [c for c in backend.llm.calls if c[0] == "chat"]
    assert len(chats) == 2  # one engine call per distinct tool list
    with_tools = next(c for c in chats if len(c[1]) == 2)
    # this template renders no tools, so they are described in the system prompt
    assert with_tools[1][0][0]["role"] == "system" and "<tools>" in with_tools[1][0][0]["content"]
    assert with_tools[3] == {}


def test_a_forced_tool_is_written_through_generate(fake_vllm) -> None:
    from pytest_evals.tools import tool

    backend = make()
    (reply,) = backend.chat([ChatRequest(({"role": "user", "content": "x"},), tools=(tool(add).schema,),
                                         tool_choice="add")])
    (call,) = reply.tool_calls
    # the stand-in's generate upper-cases the prompt: no number comes back, so the call carries the error
    assert call.name == "add" and call.error.startswith("the model gave no valid value for a")
    assert backend.llm.calls[0][0] == "generate"
    assert backend.llm.calls[0][1][0].endswith('{"name": "add", "arguments": {"a": ')


def test_loglikelihood_scores_tokens_past_the_context(fake_vllm) -> None:
    backend = make()
    # context "ab " -> "ab", continuation " c" (trailing whitespace moves); ids: a b ' ' c
    results = backend.loglikelihood([LoglikelihoodRequest("ab ", "c"), LoglikelihoodRequest("", "hi")])
    ((_, prompts, params),) = backend.llm.calls
    assert params.prompt_logprobs == 1 and params.max_tokens == 1
    assert prompts[0]["prompt_token_ids"] == [97, 98, 32, 99]
    first = results[0]
    assert (first.context_tokens, first.continuation_tokens) == (2, 2)
    assert first.logprob == pytest.approx(-(2 + 3) / 10)
    assert first.is_greedy is False  # 'c' (99) is odd: rank 3 in the stand-in
    assert prompts[1]["prompt_token_ids"] == [1, 104, 105]  # empty context: BOS prefix
    assert results[1].logprob == pytest.approx(-(1 + 2) / 10)


@pytest.mark.gpu
def test_real_vllm_engine_on_gpu(smollm2) -> None:
    """Runs only where vLLM and a CUDA GPU exist (conftest skips gpu tests elsewhere)."""
    pytest.importorskip("vllm")
    backend = make(f"vllm:{smollm2.source}?gpu_memory_utilization=0.3")
    (reply,) = backend.generate([GenerateRequest("The capital of France is", max_tokens=6)])
    assert "Paris" in reply.text
    pairs = [LoglikelihoodRequest("The capital of France is", " Paris")]
    (ours,) = backend.loglikelihood(pairs)
    (reference,) = smollm2.loglikelihood(pairs)
    assert abs(ours.logprob - reference.logprob) < 1e-2

"""The openai: backend against a real OpenAI-compatible server (llama.cpp serving SmolLM2 on loopback)."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from pytest_evals.backends.base import BackendError, BackendSettings, ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.backends.openai import OpenAIBackend
from pytest_evals.specs import SpecError, parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(llama_server):
    spec = parse_spec(f"openai:smollm2@{llama_server}")
    OpenAIBackend.check(spec)
    b = OpenAIBackend(spec, BackendSettings(timeout_s=60))
    yield b
    b.close()


def plain(url: str, path: str, payload: dict) -> dict:
    """The same request without streaming: the server's own usage is the reference."""
    return httpx.post(f"{url}{path}", json={"model": "smollm2", **payload}, timeout=60).json()


def test_generate_streams_with_real_ttft_and_server_token_counts(backend, llama_server) -> None:
    (reply,) = backend.generate([GenerateRequest("The capital of France is", max_tokens=8)])
    reference = plain(llama_server, "/completions",
                      {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert reply.text == reference["choices"][0]["text"]
    assert reply.completion_tokens == reference["usage"]["completion_tokens"]
    assert 0 < reply.ttft_s <= reply.latency_s
    assert reply.tpot_s > 0


def test_generate_honours_stop(backend) -> None:
    (reply,) = backend.generate([GenerateRequest("1, 2, 3, 4,", max_tokens=16, stop=(" 7",))])
    assert " 7" not in reply.text and reply.text.startswith(" 5, 6")


def test_chat_streams(backend, llama_server) -> None:
    messages = ({"role": "user", "content": "What is the capital of France?"},)
    (reply,) = backend.chat([ChatRequest(messages, max_tokens=12)])
    reference = plain(llama_server, "/chat/completions",
                      {"messages": list(messages), "max_tokens": 12, "temperature": 0})
    assert reply.text == reference["choices"][0]["message"]["content"]
    assert reply.completion_tokens == reference["usage"]["completion_tokens"]
    assert 0 < reply.ttft_s <= reply.latency_s


def test_loglikelihood_reads_the_continuation_tokens_of_the_echo(backend, llama_server) -> None:
    (result,) = backend.loglikelihood([LoglikelihoodRequest("The capital of France is", " Paris")])
    echo = plain(llama_server, "/completions", {"prompt": "The capital of France is Paris", "max_tokens": 1,
                                                "temperature": 0, "echo": True, "logprobs": 1})["choices"][0]["logprobs"]
    # " Paris" is the last echoed prompt token; the one generated token after it is not scored.
    paris = echo["tokens"].index(" Paris")
    assert result.continuation_tokens == 1 and result.context_tokens == paris
    assert result.logprob == pytest.approx(echo["token_logprobs"][paris])


def test_a_dead_server_is_a_backend_error(llama_server) -> None:
    from conftest import free_port

    spec = parse_spec(f"openai:smollm2@http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(SpecError, match="no OpenAI-compatible server answers"):
        OpenAIBackend.check(spec)
    dead = OpenAIBackend(spec, BackendSettings(timeout_s=2))
    with pytest.raises(BackendError, match="ConnectError"):
        dead.generate([GenerateRequest("hi", max_tokens=2)])


def test_suite_against_the_server_under_xdist(pytester: pytest.Pytester, llama_server) -> None:
    pytester.makepyfile(
        test_served="""
        import pytest

        @pytest.mark.parametrize("prompt", ["The capital of France is", "The capital of Italy is"])
        def test_capital(model, prompt):
            reply = model.generate(prompt, max_tokens=6)
            assert reply.ttft_s > 0 and reply.completion_tokens > 0

        def test_chat(model):
            assert model.chat("Say hello.", max_tokens=8).text
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", f"--model=openai:smollm2@{llama_server}", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*PASSED*test_capital[[]The capital of France is-openai:smollm2[]]*"])
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    rows = con.execute("SELECT c.model, k.kind, k.ttft_s, k.latency_s, k.output_tokens FROM cases c "
                       "JOIN calls k ON k.case_id = c.id").fetchall()
    assert len(rows) == 3 and {r[0] for r in rows} == {"openai:smollm2"}
    assert all(0 < r[2] <= r[3] and r[4] > 0 for r in rows)

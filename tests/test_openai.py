"""The openai: backend against a real OpenAI-compatible server (llama.cpp serving SmolLM2 on loopback)."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from pytest_evals.backends.base import (
    BackendError,
    BackendSettings,
    ChatRequest,
    GenerateRequest,
    LoglikelihoodRequest,
    UnsupportedTask,
)
from pytest_evals.backends.openai import OpenAIBackend
from pytest_evals.backends.openai_echo import echo_is_shifted, score_echo
from pytest_evals.backends.specs import SpecError, parse_spec

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
    assert reply.prompt_tokens == reference["usage"]["prompt_tokens"]  # from the server's tokenizer
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


def echo_of(url: str, prompt: str) -> dict:
    return plain(url, "/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0,
                                       "echo": True, "logprobs": 1})["choices"][0]["logprobs"]


def test_score_echo_reads_the_continuation_tokens(llama_server) -> None:
    prompt = "The capital of France is Paris"
    echo = echo_of(llama_server, prompt)
    result = score_echo(echo, "The capital of France is", prompt, "openai:smollm2")
    # " Paris" is the last echoed prompt token; the one generated token after it is not scored.
    paris = echo["tokens"].index(" Paris")
    assert result.continuation_tokens == 1 and result.context_tokens == paris
    assert result.logprob == pytest.approx(echo["token_logprobs"][paris])


def test_llama_cpp_echo_is_one_token_off_and_loglikelihood_is_refused(backend, llama_server) -> None:
    echo = echo_of(llama_server, "One, two, three, four, five, six, seven, eight")
    assert echo_is_shifted(echo["tokens"], echo["top_logprobs"])
    # Read one position later, the same alternatives line up with the tokens they predict.
    realigned = [None, *echo["top_logprobs"][:-1]]
    assert not echo_is_shifted(echo["tokens"], realigned)
    with pytest.raises(UnsupportedTask, match="scores each echoed prompt token with the distribution that follows"):
        backend.loglikelihood([LoglikelihoodRequest("The capital of France is", " Paris")])


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

        def test_choose(model):
            assert model.choose("The capital of France is", [" Paris", " Rome"]) == 0
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", f"--model=openai:smollm2@{llama_server}", "-v")
    result.assert_outcomes(passed=3, errors=1)  # llama.cpp's loglikelihoods are refused, not scored
    result.stdout.fnmatch_lines(["*ERROR*test_choose*"])
    result.stdout.fnmatch_lines(["*PASSED*test_capital[[]The capital of France is-openai:smollm2[]]*"])
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    rows = con.execute("SELECT c.model, k.kind, k.ttft_s, k.latency_s, k.output_tokens FROM cases c "
                       "JOIN calls k ON k.case_id = c.id").fetchall()
    assert len(rows) == 4 and {r[0] for r in rows} == {"openai:smollm2"}
    assert all(0 < r[2] <= r[3] and r[4] > 0 for r in rows if r[1] != "choose")
    (outcome,) = con.execute("SELECT outcome FROM cases WHERE nodeid LIKE '%test_choose%'").fetchone()
    assert outcome == "error"


def test_a_stream_cut_by_the_server_is_sent_again_and_answered_whole(tmp_path) -> None:
    """llama-cpp-python's default server cuts a stream when another request arrives: the cut request is
    sent again (never a short reply) and says how often it was cut."""
    import threading
    import time

    from conftest import embedded_gguf_path, start_llama_server

    proc, url = start_llama_server(embedded_gguf_path(), tmp_path / "server.log", "--interrupt_requests", "True")
    try:
        spec = parse_spec(f"openai:smollm2@{url}")
        long, short = OpenAIBackend(spec, BackendSettings()), OpenAIBackend(spec, BackendSettings())
        outcome: dict = {}
        started = threading.Event()

        def run_long() -> None:
            started.set()
            outcome["reply"] = long.generate([GenerateRequest("Once upon a time", max_tokens=200)])[0]

        thread = threading.Thread(target=run_long)
        thread.start()
        started.wait()
        time.sleep(1.0)  # the long stream is under way (it takes several seconds)
        short.generate([GenerateRequest("Hi", max_tokens=2)])
        thread.join(timeout=300)
        reply = outcome["reply"]
        assert reply.stream_cuts >= 1 and reply.finish_reason == "length" and reply.completion_tokens == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_suite_against_a_server_that_cuts_streams_answers_every_case(pytester: pytest.Pytester, tmp_path) -> None:
    """Under -n 2, against llama-cpp-python's default server: every case is answered (before, every case
    of such a chat suite ended in error), and the summary says why it was slower and how to avoid it."""
    from conftest import embedded_gguf_path, rows, start_llama_server

    proc, url = start_llama_server(embedded_gguf_path(), tmp_path / "server.log", "--interrupt_requests", "True")
    try:
        pytester.makepyfile(test_chat="""
            import pytest

            @pytest.mark.evals_threshold(0.0)
            @pytest.mark.parametrize("n", range(12))
            def test_chat(model, n):
                assert model.chat(f"Write a sentence about the number {n}.", max_tokens=24).text
            """)
        result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{url}", "-n", "2")
        assert result.ret == 0, result.stdout.str()[-3000:]
        assert rows(pytester, "SELECT outcome, count(*) FROM cases GROUP BY 1") == [("passed", 12)]
        (cuts,), = rows(pytester, "SELECT total(stream_cuts) FROM calls")
        assert cuts > 0
        result.stdout.fnmatch_lines([f"evals-http: openai:smollm2@{url} cut {int(cuts)} streams when another request "
                                     "arrived*--interrupt_requests False*"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)

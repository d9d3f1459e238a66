"""Retries, Retry-After, the circuit breaker; real faults from a proxy in front of the llama.cpp server."""

from __future__ import annotations

import email.utils
import random
import sqlite3
import time

import pytest
from conftest import FAKE_BACKEND, _required, embedded_gguf_path, rows, start_llama_server, stop
from faultproxy import FaultMix, FaultProxy

from pytest_evals.backends.base import BackendError, TransientError, parse_retry_after
from pytest_evals.calls.reliability import CircuitBreaker, CircuitOpen, RetryPolicy, call_with_retries


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_retry_after_wins_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=6, wait_s=1.0, max_wait_s=5.0)
    rng = random.Random(1)
    waits = [policy.wait(n, None, rng) for n in range(1, 6)]
    assert all(0.5 <= w <= min(5.0, 2 ** (n - 1)) for n, w in zip(range(1, 6), waits))
    assert policy.wait(1, TransientError("x", "rate_limit", retry_after=3.0), rng) == 3.0
    assert policy.wait(1, TransientError("x", "rate_limit", retry_after=99.0), rng) == 5.0


def test_retries_until_success_and_only_on_the_chosen_faults() -> None:
    failures = ["server", "rate_limit"]
    seen: list[int] = []

    def flaky(attempt: int) -> str:
        seen.append(attempt)
        if failures:
            raise TransientError("boom", failures.pop(0))
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(attempts=3, wait_s=0), None, sleep=lambda s: None) == "ok"
    assert seen == [1, 2, 3]
    with pytest.raises(TransientError):  # timeouts not chosen: no retry
        call_with_retries(lambda n: (_ for _ in ()).throw(TransientError("slow", "timeout")),
                          RetryPolicy(attempts=5, on=("server",)), None, sleep=lambda s: None)
    calls = []
    with pytest.raises(BackendError):  # a permanent fault is never retried
        call_with_retries(lambda n: calls.append(n) or (_ for _ in ()).throw(BackendError("400")),
                          RetryPolicy(attempts=5, wait_s=0), None, sleep=lambda s: None)
    assert calls == [1]


def test_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() -> None:
    breaker = CircuitBreaker("openai:x", threshold=3, cooldown_s=0.2)
    fail = lambda n: (_ for _ in ()).throw(TransientError("down", "connection"))  # noqa: E731
    for _ in range(3):
        with pytest.raises(TransientError):
            call_with_retries(fail, RetryPolicy(attempts=1), breaker)
    with pytest.raises(CircuitOpen, match="circuit open for openai:x after 3 consecutive failures"):
        call_with_retries(lambda n: "never called", RetryPolicy(attempts=1), breaker)
    time.sleep(0.25)
    assert call_with_retries(lambda n: "back", RetryPolicy(attempts=1), breaker) == "back"  # the probe
    assert breaker.failures == 0 and breaker.opened_at is None


@pytest.mark.parametrize(
    "marker, message",
    [
        ("evals_retry(tries=3)", "*@pytest.mark.evals_retry() got an unexpected keyword argument 'tries'"),
        ("evals_retry(on=('server', 'oops'))", "*@pytest.mark.evals_retry: on='oops' is not one of*"),
        ("evals_retry(attempts=0)", "*@pytest.mark.evals_retry: attempts=0 must be a whole number >= 1"),
    ],
)
def test_wrong_marker_use_names_the_marker(fake_project: pytest.Pytester, marker: str, message: str) -> None:
    fake_project.makepyfile(test_r=f"import pytest\n\n@pytest.mark.{marker}\ndef test_r(model):\n    pass\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_r.py::test_r: {message}"])


FLAKY_BACKEND = FAKE_BACKEND + '''
from pytest_evals.backends.base import TransientError

FAILS = {}


class Flaky(FakeBackend):
    def generate(self, requests):
        key = requests[0].prompt
        FAILS[key] = FAILS.get(key, 0) + 1
        if FAILS[key] <= int(key.split("-")[1]):
            raise TransientError(f"HTTP 503 #{FAILS[key]}", "server")
        return super().generate(requests)


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
    register("flaky", Flaky)
'''


def test_every_attempt_is_a_row_and_outliving_retries_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FLAKY_BACKEND)
    pytester.makeini("[pytest]\nevals_retry = attempts=3 wait_s=0.01 max_wait_s=0.02\n")
    pytester.makepyfile(
        test_f="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("fails", [0, 2, 5])
        def test_f(model, fails):
            model.generate(f"p-{fails}")
        """
    )
    # one call at a time: this backend fails by the batch's first prompt (batching has its own tests)
    result = pytester.runpytest("--model=flaky:a", "--evals-max-error-rate=0.5", "--evals-batch-size=1")
    result.assert_outcomes(passed=2, errors=1)
    attempts = rows(pytester, "SELECT c.nodeid, k.attempt, k.error IS NOT NULL FROM calls k "
                              "JOIN cases c ON c.id = k.case_id ORDER BY k.id")
    by_case: dict[str, list] = {}
    for nodeid, attempt, failed in attempts:
        by_case.setdefault(nodeid.split("[")[1][0], []).append((attempt, failed))
    assert by_case == {"0": [(1, 0)], "2": [(1, 1), (2, 1), (3, 0)], "5": [(1, 1), (2, 1), (3, 1)]}
    outcome = rows(pytester, "SELECT outcome, error FROM cases WHERE nodeid LIKE '%5-flaky%'")[0]
    assert outcome[0] == "error" and "HTTP 503 #3" in outcome[1]


SERVED_SUITE = """
import pytest

PROMPTS = [f"Count from {n}: {n}, {n + 1}," for n in range(1, 13)]


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_generate(model, prompt):
    assert model.generate(prompt, max_tokens=8).text


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("topic", ["the sea", "a cat", "rain", "bread"])
def test_chat(model, topic):
    assert model.chat(f"Write one sentence about {topic}.", max_tokens=12).text
"""
MIX = {"rate_limit": 0.08, "rate_limit_date": 0.03, "server_500": 0.06, "server_503": 0.05, "stall": 0.03,
       "reset": 0.06, "cut": 0.09}


def outputs(db) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT nodeid, output_text FROM cases"))
    finally:
        con.close()


@pytest.fixture(scope="module")
def one_token_server(tmp_path_factory: pytest.TempPathFactory):
    """The llama.cpp server evaluating one token at a time (batch and micro-batch of 1). It reuses the
    cached prefix the previous request shares with the next; evaluated in other splits, those tokens come
    out a few bits apart and a greedy reply can change (seen: 2 of 16 replies, with retries reordering
    the requests). One token at a time, each token is computed the same whatever came before: a reply
    depends on its request alone, and fault-free replies are an exact oracle in any order."""
    _required("llama_cpp", "pip install 'llama-cpp-python[server]'")
    proc, url = start_llama_server(embedded_gguf_path(), tmp_path_factory.mktemp("llama") / "server.log",
                                   "--interrupt_requests", "False", "--n_batch", "1", "--n_ubatch", "1")
    yield url
    stop(proc)


@pytest.mark.slow
def test_under_real_faults_retries_give_the_fault_free_replies(pytester: pytest.Pytester,
                                                                one_token_server: str) -> None:
    pytester.makepyfile(test_served=SERVED_SUITE)
    upstream = one_token_server.rsplit("/v1", 1)[0]
    clean = pytester.runpytest_subprocess(f"--model=openai:smollm2@{one_token_server}", "--evals-db=clean.sqlite")
    assert clean.ret == 0
    clean_out = {k.split("@")[0] + k.split("]")[-1]: v for k, v in outputs(pytester.path / "clean.sqlite").items()}
    assert len(clean_out) == 16 and all(clean_out.values())
    # one at a time (every call meets its faults alone), then batched across cases (a batch's failed
    # requests are made again by their cases, with their retries, in another order)
    # (the batched pass at half the fault rates: its cases' own calls come in another order, and five
    # faults in a row would open the circuit breaker; concurrency 1: the server answers one request at a
    # time, and requests queued behind the others would wait out part of the timeout)
    for name, extra, rates in (("faulty", ["--evals-batch-size=1"], MIX),
                               ("batched", ["--evals-concurrency=1"], {k: v / 2 for k, v in MIX.items()})):
        # a stall lasts until the client's timeout gives up on it; the timeout leaves real answers time
        # on a loaded machine (1.5 s did not: real calls timed out in a row and opened the circuit)
        mix = FaultMix(rates, seed=11, stall_s=60)
        with FaultProxy(upstream, mix) as proxy:
            faulty = pytester.runpytest_subprocess(
                f"--model=openai:smollm2@{proxy.url}", f"--evals-db={name}.sqlite", "--evals-timeout=8",
                "-o", "evals_retry=attempts=12 wait_s=0.05 max_wait_s=0.5", *extra)
        assert faulty.ret == 0, faulty.stdout.str()[-3000:]
        assert sum(mix.counts.values()) >= 3, mix.counts  # faults were really injected
        got = {k.split("@")[0] + k.split("]")[-1]: v for k, v in outputs(pytester.path / f"{name}.sqlite").items()}
        assert got == clean_out, name  # same reply for every case, nothing scored from a fault
        con = sqlite3.connect(pytester.path / f"{name}.sqlite")
        retried = con.execute("SELECT count(*) FROM calls WHERE attempt > 1").fetchone()[0]
        errors = con.execute("SELECT count(*) FROM cases WHERE outcome = 'error'").fetchone()[0]
        con.close()
        assert errors == 0
        if name == "faulty":
            assert retried >= 5 and sum(mix.counts.values()) >= 5


@pytest.mark.slow
def test_a_dead_server_opens_the_circuit_and_the_run_ends_fast(pytester: pytest.Pytester, llama_server) -> None:
    pytester.makepyfile(test_served=SERVED_SUITE)
    upstream = llama_server.rsplit("/v1", 1)[0]
    mix = FaultMix(dead=True)
    with FaultProxy(upstream, mix) as proxy:  # /v1/models answers; every call is reset
        result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{proxy.url}",
                                               "-o", "evals_retry=attempts=3 wait_s=0.05 max_wait_s=0.2")
    assert result.ret == 1
    result.assert_outcomes(errors=16)
    result.stdout.fnmatch_lines(["*circuit open for openai:smollm2 after 5 consecutive failures*"])
    # fast: without the circuit the server would see the window's 16 requests, then every case alone with
    # its 3 attempts (16 + 48); counted, not timed (CI shares its CPUs)
    assert mix.counts["reset"] < 16 + 16 * 3, mix.counts
    (open_errors,) = rows(pytester, "SELECT count(*) FROM cases WHERE error LIKE '%circuit open%'")[0]
    assert open_errors >= 13  # all but the first cases end at once, without calling the server


def test_a_fallback_answers_when_the_primary_fails_and_is_recorded(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FLAKY_BACKEND)
    pytester.makeini("[pytest]\nevals_retry = attempts=2 wait_s=0.01\n")
    pytester.makepyfile(
        test_f="""
        def test_f(model):
            reply = model.generate("p-9")  # the primary fails more often than it is retried
            assert reply.text == "b:P-9"
        """
    )
    result = pytester.runpytest("--model=flaky:a || fake:b", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_f[[]flaky:a[]] PASSED*"])
    calls = rows(pytester, "SELECT model, attempt, error IS NOT NULL FROM calls ORDER BY id")
    assert calls == [("flaky:a", 1, 1), ("flaky:a", 2, 1), ("fake:b", 1, 0)]
    assert rows(pytester, "SELECT model, outcome FROM cases") == [("flaky:a", "passed")]

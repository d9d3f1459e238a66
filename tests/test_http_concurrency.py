"""Concurrent HTTP: the openai: backend's requests run on one event loop (async httpx), at most the
concurrency limit in flight; 429s halve the limit and successes grow it back (AIMD)."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest
from conftest import cases_stored, counts

from pytest_evals.backends.aio import shared_loop
from pytest_evals.backends.base import BackendSettings, GenerateRequest, PartialBatch, TransientError
from pytest_evals.backends.fleet import Fleet
from pytest_evals.backends.openai import OpenAIBackend
from pytest_evals.backends.openai_http import PROBE_TIMEOUT_S
from pytest_evals.backends.specs import parse_spec


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()


def one_server(limit: int) -> Fleet:
    """The limit of a spec naming one server."""
    return Fleet([("http://server/v1", None)], limit)


def test_limiter_halves_on_429_and_grows_back_one_by_one() -> None:
    """In flight never exceeds the limit of the moment; the limit follows AIMD."""
    limiter = one_server(8)
    seen: list[tuple[int, int]] = []  # (in flight, limit) as each request starts

    async def request(i: int) -> int:
        async with limiter.slot() as server:
            seen.append((server.active, server.limit))
            await asyncio.sleep(0.001)
            if i == 20:
                limiter.throttled(server)
            else:
                limiter.succeeded(server)
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(request(i) for i in range(200)))

    assert shared_loop().run(main()) == list(range(200))
    assert all(active <= limit for active, limit in seen)
    assert max(active for active, _ in seen) == 8
    limits = [limit for _, limit in seen]
    assert 4 in limits  # halved once
    assert limits[-1] == 8  # and grown back by one after each `limit` successes in a row
    grown = [b for a, b in zip(limits, limits[1:]) if b > a]
    assert grown == [5, 6, 7, 8]


def test_a_batch_keeps_the_limit_in_flight_against_a_real_server(stub_server) -> None:
    url = stub_server(latency_s=0.05)
    backend = OpenAIBackend(parse_spec(f"openai:stub@{url}"), BackendSettings(concurrency=6))
    try:
        replies = backend.generate([GenerateRequest(f"r{i}", max_tokens=4) for i in range(60)])
    finally:
        backend.close()
    assert [r.text for r in replies] == [f"echo:r{i}" for i in range(60)]
    assert all(r.ttft_s is not None and 0 < r.ttft_s <= r.latency_s for r in replies)
    assert stats(url)["max_in_flight"] == 6


def test_429s_in_a_batch_are_waited_out_and_the_limit_backs_off(stub_server) -> None:
    url = stub_server(latency_s=0.02, rate_limit_every=5)
    backend = OpenAIBackend(parse_spec(f"openai:stub@{url}"), BackendSettings(concurrency=8))
    try:
        replies = backend.generate([GenerateRequest(f"r{i}", max_tokens=4) for i in range(40)])
        assert [r.text for r in replies] == [f"echo:r{i}" for i in range(40)]
        served = stats(url)
        assert served["rate_limited"] >= 8 and served["requests"] == 40 + served["rate_limited"]
        assert backend.fleet.lanes[0].limit < 8  # backed off, and not yet grown back
        # a lone request meets its 429 itself (the case's retry policy decides)
        with pytest.raises(TransientError, match="429") as caught:
            for i in range(5):
                backend.generate([GenerateRequest(f"alone{i}", max_tokens=4)])
        assert caught.value.kind == "rate_limit"
    finally:
        backend.close()


def test_a_batch_with_some_failures_keeps_the_answers(stub_server) -> None:
    url = stub_server(latency_s=0.01)
    backend = OpenAIBackend(parse_spec(f"openai:stub@{url}"), BackendSettings(concurrency=4))
    try:
        with pytest.raises(PartialBatch) as caught:
            backend.generate([GenerateRequest(p, max_tokens=4) for p in ("r0", "fail1", "r2", "fail3")])
    finally:
        backend.close()
    assert [r.text if r is not None else None for r in caught.value.results] == ["echo:r0", None, "echo:r2", None]
    assert isinstance(caught.value.first_error, TransientError) and caught.value.first_error.kind == "server"


def test_cases_of_a_suite_share_the_limit_in_flight(pytester: pytest.Pytester, stub_server) -> None:
    url = stub_server(latency_s=0.05)
    pytester.makepyfile(test_requests="""
        import pytest

        @pytest.mark.parametrize("i", range(48))
        def test_request(model, i):
            assert model.generate(f"q{i}", max_tokens=4).text == f"echo:q{i}"
        """)
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}", "--evals-concurrency=4")
    result.assert_outcomes(passed=48)
    assert stats(url)["max_in_flight"] == 4
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    batched = con.execute("SELECT count(*) FROM calls WHERE batched = 1").fetchone()[0]
    con.close()
    assert batched >= 45  # sent while others were in flight (the last ones may be alone)


def test_x_stops_the_requests_in_flight_and_skips_the_cases_that_wait(
        pytester: pytest.Pytester, stub_server) -> None:
    """With -x a window's requests still in flight are cancelled, not waited for: the cases that wait
    for them are skipped (their calls recorded as not answered), and no later window starts."""
    url = stub_server(latency_s=0.3)
    pytester.makepyfile(test_requests="""
        import pytest

        @pytest.mark.parametrize("i", range(48))
        def test_request(model, i):
            assert model.generate(f"q{i}", max_tokens=4).text == "echo:q1"  # only case 1 passes
        """)
    # windows of 8 x 2 = 16 cases, 2 requests in flight: case 0 fails when the first two are answered
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}", "--evals-concurrency=2",
                                           "--evals-batch-size=2", "-x", "-rs")
    got = counts(result)
    # (under -x windows do not slide: a case would start when case 1 ends, before case 0's failure is reported)
    assert got["wrong"] == 1 and got.get("passed", 0) <= 1 and got["skipped"] == 15 - got.get("passed", 0), got
    served = stats(url)["requests"]
    assert served < 16, served  # most of the window's requests never went out
    result.stdout.fnmatch_lines(["*not run to its end: the run is stopping (stopping after 1 failures)*"])
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    cases = dict(con.execute("SELECT nodeid, outcome FROM cases").fetchall())
    unanswered = con.execute("SELECT count(*) FROM calls WHERE error LIKE 'not answered: %'").fetchone()[0]
    con.close()
    assert len(cases) == 16 and cases["test_requests.py::test_request[0-openai:stub]"] == "failed"
    assert unanswered == got["skipped"]


def test_ctrl_c_ends_the_run_at_once_and_keeps_what_finished(pytester: pytest.Pytester, stub_server) -> None:
    """SIGINT while cases wait on a batch: the batches in flight are cancelled, the run is marked
    interrupted, and only cases that ran are recorded; a resumed run does the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    url = stub_server(latency_s=0.4)
    pytester.makepyfile(test_requests="""
        import pytest

        @pytest.mark.parametrize("i", range(40))
        def test_request(model, i):
            assert model.generate(f"q{i}", max_tokens=4).text == f"echo:q{i}"
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    args = [sys.executable, "-m", "pytest", "-q", f"--model=openai:stub@{url}", "--evals-concurrency=2",
            "--evals-batch-size=2"]
    proc = subprocess.Popen(args, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # the first window of 16 is answered, the second is in flight and a case is recorded: events, not a
    # guess at start-up time (on a loaded machine the requests are done well before any case ends)
    deadline = time.monotonic() + 120
    db = pytester.path / ".evals" / "evals.sqlite"
    while ((stats(url)["requests"] < 20 or not cases_stored(db)) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    at_signal = stats(url)["requests"]
    out, _ = proc.communicate(timeout=60)
    # the batches in flight are cancelled: at most the requests already in flight (the limit, 2) reach the
    # server after the signal, not the rest of the second window (12 more) and the windows after it
    assert stats(url)["requests"] - at_signal <= 2, out[-2000:]
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-2000:]
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    status = con.execute("SELECT status FROM runs").fetchone()[0]
    recorded = dict(con.execute("SELECT nodeid, outcome FROM cases").fetchall())
    con.close()
    assert status == "interrupted"
    assert 0 < len(recorded) < 40 and set(recorded.values()) == {"passed"}
    resumed = subprocess.run([*args, "--evals-resume"], cwd=pytester.path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert f"evals-resume: {len(recorded)} of 40 cases already done in run 1" in resumed.stdout



def test_urgent_requests_go_before_queued_batch_requests() -> None:
    """A case's own call (urgent) does not wait behind the next window's queued requests."""
    limiter = one_server(1)
    order: list[str] = []

    async def request(name: str, urgent: bool) -> None:
        async with limiter.slot(urgent):
            order.append(name)
            await asyncio.sleep(0.001)

    async def main() -> None:
        first = asyncio.ensure_future(request("batch0", False))
        await asyncio.sleep(0)  # batch0 holds the only slot
        queued = [asyncio.ensure_future(request(f"batch{i}", False)) for i in range(1, 4)]
        await asyncio.sleep(0)
        urgent = asyncio.ensure_future(request("case", True))
        await asyncio.gather(first, *queued, urgent)

    shared_loop().run(main())
    assert order == ["batch0", "case", "batch1", "batch2", "batch3"]


def test_a_cancelled_waiter_hands_its_slot_on() -> None:
    limiter = one_server(1)

    async def hold(seconds: float) -> None:
        async with limiter.slot():
            await asyncio.sleep(seconds)

    async def main() -> int:
        holder = asyncio.ensure_future(hold(0.05))
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(hold(0.0))
        await asyncio.sleep(0)
        waiter.cancel()
        await holder
        await asyncio.wait_for(hold(0.0), timeout=1)  # the slot was not lost to the cancelled waiter
        return limiter.lanes[0].active

    assert shared_loop().run(main()) == 0


def test_a_busy_server_is_not_reported_missing_at_start_up(stub_server) -> None:
    """The start-up probe waits for a connected server that answers slowly (another worker's batch)."""
    url = stub_server(models_delay_s=PROBE_TIMEOUT_S + 1)  # longer than the probe's connect timeout
    OpenAIBackend.check(parse_spec(f"openai:stub@{url}"))


def test_a_multi_turn_suite_keeps_the_limit_in_flight_at_every_turn(pytester: pytest.Pytester, stub_server) -> None:
    """Each case's next turn is sent as soon as its previous answer is in, while the other cases' turns
    are in flight: the server sees the concurrency limit in flight, and every turn's answer is the case's."""
    url = stub_server(latency_s=0.2)
    pytester.makepyfile(test_dialogues="""
        import pytest

        @pytest.mark.parametrize("i", range(12))
        def test_dialogue(model, i):
            chat = model.conversation()
            for turn in range(3):
                assert chat.say(f"case {i} turn {turn}").text == f"echo:case {i} turn {turn}"
        """)
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}", "--evals-concurrency=4",
                                           "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    seen = stats(url)
    assert seen["requests"] == 36 and seen["max_in_flight"] == 4
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    try:
        calls, beside = con.execute("SELECT count(*), sum(batched) FROM calls").fetchone()
        assert calls == 36 and beside >= 33  # sent while others were in flight (the last ones may be alone)
    finally:
        con.close()


def test_a_case_starts_as_soon_as_another_ends(pytester: pytest.Pytester, stub_server) -> None:
    """For a backend that submits (HTTP) the window slides: the 33rd case starts when the first of the
    32 before it ends, not after all of them (requests in flight never drain at a window's end), while
    reports keep pytest's order."""
    url = stub_server(latency_s=0.05)
    pytester.makepyfile(test_requests="""
        import pytest

        def log(line):
            with open("events.log", "a") as f:
                f.write(line + "\\n")

        @pytest.mark.parametrize("i", range(40))
        def test_request(model, i):
            log(f"start {i}")
            assert model.generate(f"q{i}", max_tokens=4).text == f"echo:q{i}"
            log(f"end {i}")
        """)
    # concurrency 4: at most 8 x 4 = 32 cases at once
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}", "--evals-concurrency=4",
                                           "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=40)
    events = (pytester.path / "events.log").read_text().split("\n")
    assert events.index("start 32") < max(events.index(f"end {i}") for i in range(32))
    assert events.index("start 32") > min(events.index(f"end {i}") for i in range(32))  # never more than 32 at once
    lines = [line for line in result.stdout.lines if "::test_request[" in line and "PASSED" in line]
    assert [int(line.split("[")[1].split("-")[0]) for line in lines] == list(range(40))  # pytest's order
    assert stats(url)["max_in_flight"] == 4


def test_a_server_that_cuts_every_stream_ends_each_case_as_an_error_within_its_pauses(
        pytester: pytest.Pytester, stub_server) -> None:
    """The give-up path of cut streams: each case is an error with the line that names the server's flag,
    after at most CUT_PAUSES_S of pauses (1 s here), so a bounded number of re-sends; the other cases go on."""
    url = stub_server(latency_s=0.0)
    pytester.makeconftest("import pytest_evals.backends.openai as openai\nopenai.CUT_PAUSES_S = 1.0\n")
    pytester.makepyfile(test_cut="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("prompt", ["cut1", "cut2", "fine"])
        def test_cut(model, prompt):
            assert model.generate(prompt, max_tokens=4).text == f"echo:{prompt}"
        """)
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}", "--evals-max-error-rate=1")
    assert counts(result) == {"passed": 1, "errors": 2}
    result.stdout.fnmatch_lines(["E * the stream ended without a finish_reason after 1 chunks (interrupted); cut "
                                 "* times (* s of pauses, the most a request waits is 1 s), so given up: start the "
                                 "server with --interrupt_requests False"])
    # pauses of at least half their ceiling (0.1 s doubled per cut): within 1 s, at most 5 sends; each case
    # sends twice (in the window's flight, then alone after the flight failed)
    assert stats(url)["cut"] <= 2 * 2 * 5


def test_cut_pauses_stay_within_their_budget_and_bound_the_resends() -> None:
    import random

    from pytest_evals.backends.openai import CUT_PAUSES_S, MAX_CUT_WAIT_S, cut_pause

    rng = random.Random(3)
    for _ in range(200):
        paused, cuts = 0.0, 0
        while True:
            cuts += 1
            wait = cut_pause(cuts, rng)
            ceiling = min(MAX_CUT_WAIT_S, 0.1 * 2 ** cuts)
            assert ceiling / 2 <= wait <= ceiling
            if paused + wait > CUT_PAUSES_S:
                break
            paused += wait
        assert paused <= CUT_PAUSES_S and cuts <= 25  # the pause after the last cut would pass the budget

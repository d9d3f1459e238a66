"""Several servers behind one model (``openai:NAME@URL1,URL2,...``): which server a request goes to
(fewest outstanding first, each server's own limit and circuit breaker), a dead server left out while the
others answer and taken back when it recovers, and ``calls.server`` recording which one answered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import embedded_gguf_path, free_port, rows, start_llama_server, stop, wait_until_serving

from pytest_evals.backends.base import BackendSettings, GenerateRequest, Reply, TransientError
from pytest_evals.backends.fleet import COOLDOWN_S, Fleet
from pytest_evals.backends.openai import OpenAIBackend
from pytest_evals.backends.specs import parse_spec
from pytest_evals.calls.cache import call_key, dump_result, load_result


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fleet(n: int, limit: int = 4, clock: Clock | None = None) -> Fleet:
    return Fleet([(f"http://s{i}/v1", i) for i in range(n)], limit, clock=clock or Clock())


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused


# --- the choice, without servers -----------------------------------------------------------------------
def test_a_request_goes_to_the_server_with_the_fewest_outstanding() -> None:
    f = fleet(3)
    a, b, c = f.lanes
    assert f.choose() is a  # equals: the first listed
    a.active, b.active, c.active = 2, 1, 3
    assert f.choose() is b
    b.active = 4  # b is at its limit; of the others a has fewer outstanding
    assert f.choose() is a
    a.active = c.active = 4
    assert f.choose() is None  # every server is full: the request waits
    c.active = 0
    assert f.choose() is c and f.choose(avoid=[c]) is None  # a server that failed the request is not tried again


def test_a_failing_server_is_left_out_then_probed_once_and_taken_back() -> None:
    clock = Clock()
    f = fleet(2, clock=clock)
    a, b = f.lanes
    for _ in range(2):
        f.failed(a)
    assert a.opened_at is None and f.choose() is a  # two faults in a row: still in
    f.failed(a)
    assert a.opened_at == clock.now and f.choose() is b  # the third leaves it out
    b.active = 3
    assert f.choose() is b  # however busy b is, while its cool-down lasts
    clock.now += COOLDOWN_S
    assert f.choose() is a  # cool-down over: a request may probe it (half-open)
    a.active, a.probing = 1, True
    assert f.choose() is b  # one probe at a time
    f.failed(a)  # the probe failed: out again, for twice as long
    a.active, a.probing = 0, False
    assert a.cooldown_s == 2 * COOLDOWN_S and f.choose() is b
    clock.now += COOLDOWN_S
    assert f.choose() is b
    clock.now += COOLDOWN_S
    assert f.choose() is a
    f.succeeded(a)  # the probe answered: in again, its record cleared
    assert a.opened_at is None and a.failures == 0 and a.cooldown_s == COOLDOWN_S
    b.active = 0
    assert f.choose() is a


def test_when_every_server_is_out_requests_go_to_them_anyway() -> None:
    """A call fails only when no server can answer: with all out, a request still tries them (a lone
    server behaves as without a fleet), except those that already failed it."""
    clock = Clock()
    f = fleet(2, clock=clock)
    a, b = f.lanes
    for lane in (a, b):
        for _ in range(3):
            f.failed(lane)
    assert a.opened_at is not None and b.opened_at is not None
    assert f.choose() is a and f.choose(avoid=[a]) is b and f.choose(avoid=[a, b]) is None
    single = fleet(1, clock=clock)
    for _ in range(10):
        single.failed(single.lanes[0])
    assert single.choose() is single.lanes[0]


def test_a_waiting_request_takes_the_first_server_that_frees_up() -> None:
    """Requests are bound to a server when one has a slot, not when they arrive: a slow server does not
    keep a queue of its own."""
    f = fleet(2, limit=1)
    got: list[str] = []

    async def main() -> None:
        hold_a, hold_b = asyncio.Event(), asyncio.Event()

        async def holder(event: asyncio.Event) -> None:
            async with f.slot() as lane:
                got.append(lane.name)
                await event.wait()

        async def waiter() -> None:
            async with f.slot() as lane:
                got.append(lane.name)

        holders = [asyncio.ensure_future(holder(hold_a)), asyncio.ensure_future(holder(hold_b))]
        await asyncio.sleep(0)
        late = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        assert got == ["http://s0/v1", "http://s1/v1"] and not late.done()
        hold_b.set()  # s1 frees up first
        await late
        hold_a.set()
        await asyncio.gather(*holders)

    asyncio.run(main())
    assert got == ["http://s0/v1", "http://s1/v1", "http://s1/v1"]
    assert [lane.active for lane in f.lanes] == [0, 0]


def test_a_waiting_request_probes_a_server_whose_cool_down_ends() -> None:
    """The end of a cool-down wakes the waiters: a request waiting for a busy server goes to the one
    that was left out, as its probe (the wake-up is the event loop's timer: the real clock)."""
    f = Fleet([("http://s0/v1", 0), ("http://s1/v1", 1)], 1)
    a, b = f.lanes
    got: list[str] = []

    async def main() -> None:
        for _ in range(3):
            f.failed(a)
        a.cooldown_s = 0.01  # (the timer set by the third fault waits COOLDOWN_S; this one is sooner)
        asyncio.get_running_loop().call_later(a.cooldown_s, f._grant)
        async with f.slot() as lane:  # a is out: b
            got.append(lane.name)
            async with f.slot() as second:  # b is busy: waits until a's cool-down ends
                got.append(second.name)
                assert second.probing

    asyncio.run(main())
    assert got == ["http://s1/v1", "http://s0/v1"]


def test_the_call_cache_keeps_no_server() -> None:
    """The answer of any server of the fleet is the model's: the key has no server and the stored
    answer none either (a replayed call names no server)."""
    spec = parse_spec("openai:m@http://a/v1,http://b/v1")
    request = GenerateRequest("q", max_tokens=4)
    key = call_key(spec.backend, spec.raw, "generate", request)
    assert "http://b/v1" not in dump_result(Reply("x", server="http://b/v1"))
    assert load_result(dump_result(Reply("x", server="http://b/v1"))).server is None
    assert key == call_key(spec.backend, spec.raw, "generate", request)


# --- against stub servers ----------------------------------------------------------------------------
def test_a_dead_server_is_left_out_and_every_request_answered(stub_server) -> None:
    one, two, dead = stub_server(latency_s=0.02), stub_server(latency_s=0.02), dead_url()
    backend = OpenAIBackend(parse_spec(f"openai:stub@{one},{dead},{two}"), BackendSettings(concurrency=4))
    try:
        replies = backend.generate([GenerateRequest(f"r{i}", max_tokens=4) for i in range(40)])
        dead_lane = backend.fleet.lanes[1]
        assert dead_lane.opened_at is not None and dead_lane.answered == 0
    finally:
        backend.close()
    assert [r.text for r in replies] == [f"echo:r{i}" for i in range(40)]
    served = {url: sum(r.server == url for r in replies) for url in (one, two, dead)}
    assert served[dead] == 0 and served[one] > 0 and served[two] > 0 and served[one] + served[two] == 40
    assert stats(one)["requests"] == served[one] and stats(two)["requests"] == served[two]
    assert max(stats(one)["max_in_flight"], stats(two)["max_in_flight"]) <= 4  # each server's own limit


def test_a_request_fails_only_when_every_server_failed_it(stub_server) -> None:
    backend = OpenAIBackend(parse_spec(f"openai:stub@{dead_url()},{dead_url()}"), BackendSettings(timeout_s=5))
    try:
        with pytest.raises(TransientError, match="ConnectError") as caught:
            backend.generate([GenerateRequest("alone", max_tokens=4)])
        assert caught.value.kind == "connection"
        assert [lane.failures for lane in backend.fleet.lanes] == [1, 1]  # each tried once
    finally:
        backend.close()


def test_a_server_that_comes_back_is_used_again(stub_server, tmp_path: Path) -> None:
    one, port = stub_server(latency_s=0.02), free_port()
    later = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIBackend(parse_spec(f"openai:stub@{one},{later}"), BackendSettings(concurrency=4))
    proc = None
    try:
        first = backend.generate([GenerateRequest(f"a{i}", max_tokens=4) for i in range(20)])
        lane = backend.fleet.lanes[1]
        assert {r.server for r in first} == {one} and lane.opened_at is not None
        log = tmp_path / "later.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "stubserver.py"), str(port),
                                     "0.02", "0"], stdout=handle, stderr=subprocess.STDOUT)
        wait_until_serving(proc, later, log, "stub server", timeout_s=30)
        while lane.opened_at is not None and backend.fleet._clock() - lane.opened_at < lane.cooldown_s:
            asyncio.run(asyncio.sleep(0.05))  # until its cool-down is over (at most COOLDOWN_S)
        second = backend.generate([GenerateRequest(f"b{i}", max_tokens=4) for i in range(40)])
        assert lane.opened_at is None and {r.server for r in second} == {one, later}
    finally:
        backend.close()
        if proc is not None:
            stop(proc)


SUITE = """
import pytest

@pytest.mark.parametrize("i", range(24))
def test_request(model, i):
    assert model.generate(f"q{i}", max_tokens=4).text == f"echo:q{i}"
"""


def test_a_suite_spreads_over_the_servers_and_records_which_answered(pytester: pytest.Pytester,
                                                                     stub_server) -> None:
    """--evals-concurrency applies per server; calls.server names the one that answered; a dead URL
    costs no case; the call cache replays the fleet's answers whichever server gave them."""
    one, two, dead = stub_server(latency_s=0.1), stub_server(latency_s=0.1), dead_url()
    pytester.makepyfile(test_requests=SUITE)
    spec = f"--model=openai:stub@{one},{dead},{two}"
    result = pytester.runpytest_subprocess(spec, "--evals-concurrency=2", "--evals-cache=use")
    result.assert_outcomes(passed=24)
    assert stats(one)["max_in_flight"] == 2 and stats(two)["max_in_flight"] == 2
    calls = rows(pytester, "SELECT server, error, attempt FROM calls")
    assert len(calls) == 24 and all(error is None and attempt == 1 for _, error, attempt in calls)
    assert {server for server, _, _ in calls} == {one, two}
    assert sum(server == one for server, _, _ in calls) == stats(one)["requests"]
    replayed = pytester.runpytest_subprocess(spec, "--evals-cache=replay")
    replayed.assert_outcomes(passed=24)
    assert rows(pytester, "SELECT count(*), count(server) FROM calls WHERE cached = 1") == [(24, 0)]


def test_a_fleet_with_no_server_answering_is_one_line_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_requests=SUITE)
    a, b = dead_url(), dead_url()
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{a},{b}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --model openai:stub@{a},{b}: none of its 2 servers answers: "
                                 f"{a} (ConnectError), {b} (ConnectError); start one or fix the URLs after '@'"])


# --- against real llama.cpp servers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_llama_server(tmp_path_factory: pytest.TempPathFactory):
    proc, url = start_llama_server(embedded_gguf_path(), tmp_path_factory.mktemp("llama2") / "server.log")
    yield url
    stop(proc)


@pytest.mark.slow
def test_two_llama_servers_and_a_dead_url_answer_every_case(pytester: pytest.Pytester, llama_server,
                                                           second_llama_server) -> None:
    pytester.makepyfile(test_fleet_suite="""
        import pytest

        @pytest.mark.parametrize("n", range(12))
        def test_count(model, n):
            reply = model.generate(f"{n}, {n + 1}, {n + 2},", max_tokens=4)
            assert reply.completion_tokens > 0
        """)
    dead = dead_url()
    result = pytester.runpytest_subprocess(f"--model=openai:smollm2@{llama_server},{dead},{second_llama_server}",
                                           "--evals-concurrency=2")
    result.assert_outcomes(passed=12)
    calls = rows(pytester, "SELECT server, error FROM calls")
    assert len(calls) == 12 and all(error is None for _, error in calls)
    assert {server for server, _ in calls} == {llama_server, second_llama_server}

"""Several servers behind one model: throughput with 1, 2 and 4 servers (``openai:NAME@URL1,URL2,...``).

    python benchmarks/fleet.py [--requests 200] [--latency 0.05] [--concurrency 8] [--repeats 3]

Four stub servers (tests/stubserver.py ``--serial``: starlette + uvicorn, from llama-cpp-python's server
extra) each serve one request at a time after a fixed latency, as a server bound by its model does, so a
server's throughput is 1 / latency however many requests it is sent, and only more servers go faster.
The same N calls are timed with the first 1, 2 and 4 of them, alternating, two ways:

- backend: ``OpenAIBackend.generate`` of the N requests in this process (the fleet's spreading alone);
- pytest suite: a whole ``pytest`` process over a suite of N cases (start-up, collection, windows,
  the store and the summary included), ``--model=openai:stub@URL1,...``.

Also timed: the same suite against one server that answers at once and serves any number together
(the plugin's own time for N cases, which no number of servers removes: the floor of the suite's rows).

Prints medians (min-max over the runs), calls per second, each server's share of the calls, and the
speed-up over one server (the servers' bound: 2x and 4x).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from http_concurrency import STUB_SERVER, SUITE, free_port  # the same stub server, suite and port helper

FLEETS = (1, 2, 4)


@contextlib.contextmanager
def stub_servers(count: int, latency: float, work: Path, serial: bool = True) -> Iterator[list[str]]:
    """``count`` stub servers (``serial``: each serving one request at a time): their base URLs, ready."""
    import httpx

    procs, urls = [], []
    try:
        for _ in range(count):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, str(STUB_SERVER), str(port), str(latency), "0",
                                           *(["--serial"] if serial else [])], cwd=work))
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url in urls:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit(f"the stub server at {url} did not start")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def served(urls: list[str]) -> list[int]:
    import httpx

    return [httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()["requests"] for url in urls]


def backend_time(urls: list[str], n: int, concurrency: int) -> float:
    from pytest_evals.backends.base import BackendSettings, GenerateRequest
    from pytest_evals.backends.openai import OpenAIBackend
    from pytest_evals.backends.specs import parse_spec

    backend = OpenAIBackend(parse_spec(f"openai:stub@{','.join(urls)}"), BackendSettings(concurrency=concurrency))
    try:
        start = time.perf_counter()
        replies = backend.generate([GenerateRequest(f"request {i}", max_tokens=4) for i in range(n)])
        elapsed = time.perf_counter() - start
    finally:
        backend.close()
    assert [r.text for r in replies] == [f"echo:request {i}" for i in range(n)]
    return elapsed


def suite_time(urls: list[str], work: Path, concurrency: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--model=openai:stub@{','.join(urls)}", f"--evals-concurrency={concurrency}",
                          f"--evals-db={work / 'runs.sqlite'}"], cwd=work, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"pytest failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="each server's time per request, one at a time")
    parser.add_argument("--concurrency", type=int, default=8, help="--evals-concurrency (per server)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[tuple[str, int], list[float]] = {(way, k): [] for way in ("backend", "pytest suite") for k in FLEETS}
    shares: dict[int, list[int]] = {k: [0] * k for k in FLEETS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "test_requests.py").write_text(SUITE.format(n=args.requests))
        floor: list[float] = []
        with stub_servers(max(FLEETS), args.latency, work) as urls, stub_servers(1, 0.0, work, serial=False) as free:
            for _ in range(args.repeats):
                floor.append(suite_time(free, work, args.concurrency))
                for k in FLEETS:
                    fleet = urls[:k]
                    before = served(fleet)
                    times["backend", k].append(backend_time(fleet, args.requests, args.concurrency))
                    times["pytest suite", k].append(suite_time(fleet, work, args.concurrency))
                    shares[k] = [s + a - b for s, a, b in zip(shares[k], served(fleet), before)]
    bound = 1 / args.latency
    print(f"{args.requests} streamed completions; each server serves one at a time in {args.latency * 1000:.0f} ms "
          f"({bound:.0f} calls/s); --evals-concurrency {args.concurrency} per server; "
          f"median (min-max) of {args.repeats} runs, alternating")
    print(f"{'way':<13} {'servers':>7} {'wall s':>7} {'min-max':>13} {'calls/s':>8} {'speed-up':>9} {'bound':>6}  "
          "share of calls per server (both ways)")
    for way in ("backend", "pytest suite"):
        one = statistics.median(times[way, 1])
        for k in FLEETS:
            values = times[way, k]
            med = statistics.median(values)
            total = sum(shares[k]) or 1
            share = " ".join(f"{s / total:.0%}" for s in shares[k])
            print(f"{way:<13} {k:>7} {med:7.2f} {min(values):6.2f}-{max(values):6.2f} "
                  f"{args.requests / med:8.1f} {one / med:8.2f}x {k:5d}x  {share}")
    low = statistics.median(floor)
    print(f"{'floor':<13} {'-':>7} {low:7.2f} {min(floor):6.2f}-{max(floor):6.2f} {args.requests / low:8.1f}  "
          "(the suite against a server that answers at once: the plugin's own time)")
    for way in ("backend", "pytest suite"):
        one = statistics.median(times[way, 1])
        ratios = ", ".join(f"{k} servers {one / statistics.median(times[way, k]):.2f}x" for k in FLEETS[1:])
        print(f"{way}: speed-up over 1 server: {ratios}")


if __name__ == "__main__":
    main()

"""Concurrent HTTP: the plugin's batched, concurrent requests vs a raw asyncio loop and vs one at a time.

    python benchmarks/http_concurrency.py [--requests 1000] [--concurrency 10] [--latency 0.1] [--repeats 3]

A local OpenAI-compatible stub server (tests/stubserver.py: starlette + uvicorn, from llama-cpp-python's
server extra) answers every streamed completion after a fixed latency, so what is measured is the client: how many requests it
keeps in flight and what it adds. Timed, alternating, each a whole process as a user runs it:

- raw asyncio: a script of httpx.AsyncClient, asyncio.gather and a semaphore of the concurrency,
  streaming each completion as the plugin does (`python this-file --raw URL`: interpreter, imports, loop);
- pytest-evals: a suite of one case per request, `--evals-concurrency` of the same size (pytest's own
  start-up, collection and summary included);
- pytest-evals, no other plugins: the same with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -p pytest_evals.plugin``
  (an environment with only pytest and pytest-evals; this machine's also loads hypothesis, anyio, trio,
  pytest-benchmark and pytest-cov at every pytest start-up);
- pytest-evals, one at a time: the same suite with `--evals-batch-size 1` (once: it is slow by design).

Also shown, for reference: the raw loop timed inside this process (no interpreter start or imports).
Prints medians, spreads and the ratios (goals: raw / plugin >= 0.9, one at a time / plugin >= 8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

STUB_SERVER = Path(__file__).resolve().parents[1] / "tests" / "stubserver.py"  # echo:PROMPT after a latency

SUITE = '''
import pytest


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range({n}))
def test_request(model, i):
    assert model.generate(f"request {{i}}", max_tokens=4).text == f"echo:request {{i}}"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def stub_server(work: Path, latency: float) -> Iterator[str]:
    """tests/stubserver.py on a free port, ready: its base URL."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, str(STUB_SERVER), str(port), str(latency), "0"], cwd=work)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


ALONE_MODE = "pytest-evals, no other plugins"
ALONE = ("-p", "pytest_evals.plugin")  # with PYTEST_DISABLE_PLUGIN_AUTOLOAD: no other installed plugin loads


def plugin_time(work: Path, url: str, concurrency: int, *extra: str, alone: bool = False) -> float:
    """A whole `pytest` process over the suite in ``work`` against ``url``: its wall time. ``alone``: with
    no plugin but this one (as in an environment where only pytest and pytest-evals are installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    if alone:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        extra = (*ALONE, *extra)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--model=openai:stub@{url}", f"--evals-concurrency={concurrency}",
                          f"--evals-db={work / 'runs.sqlite'}", *extra], cwd=work, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pytest failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


async def raw(url: str, n: int, concurrency: int) -> None:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=2 * concurrency)) as client:
        async def one(i: int) -> str:
            async with limit:
                parts = []
                payload = {"model": "stub", "prompt": f"request {i}", "max_tokens": 4, "stream": True}
                async with client.stream("POST", "/completions", json=payload) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:") and line[5:].strip() != "[DONE]":
                            parts.append(line)
                return "".join(parts)

        await asyncio.gather(*(one(i) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", metavar="URL", help="only run the raw loop against URL (the process timed)")
    args = parser.parse_args()
    if args.raw:
        asyncio.run(raw(args.raw, args.requests, args.concurrency))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "test_requests.py").write_text(SUITE.format(n=args.requests))
        with stub_server(work, args.latency) as url:
            def plugin(*extra: str, alone: bool = False) -> float:
                return plugin_time(work, url, args.concurrency, *extra, alone=alone)

            def raw_process() -> float:
                start = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--raw", url, f"--requests={args.requests}",
                                f"--concurrency={args.concurrency}"], check=True, env=env)
                return time.perf_counter() - start

            times: dict[str, list[float]] = {"raw asyncio": [], "pytest-evals": [], ALONE_MODE: [],
                                             "raw asyncio, in-process": []}
            for _ in range(args.repeats):
                times["raw asyncio"].append(raw_process())
                times["pytest-evals"].append(plugin())
                times[ALONE_MODE].append(plugin(alone=True))
                start = time.perf_counter()
                asyncio.run(raw(url, args.requests, args.concurrency))
                times["raw asyncio, in-process"].append(time.perf_counter() - start)
            times["pytest-evals, one at a time"] = [plugin("--evals-batch-size=1", "--evals-concurrency=1")]
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"{args.requests} streamed completions, server latency {args.latency * 1000:.0f} ms, concurrency "
          f"{args.concurrency}; median, min-max over runs")
    print(f"{'mode':<30} {'wall s':>8} {'spread':>16} {'runs':>5}")
    for mode, values in times.items():
        print(f"{mode:<30} {med[mode]:8.2f} {min(values):7.2f}-{max(values):7.2f} {len(values):5d}")
    print(f"raw asyncio / pytest-evals: {med['raw asyncio'] / med['pytest-evals']:.2f}x (goal >= 0.9x; "
          f"in-process raw loop / pytest-evals: {med['raw asyncio, in-process'] / med['pytest-evals']:.2f}x)")
    print(f"raw asyncio / {ALONE_MODE}: {med['raw asyncio'] / med[ALONE_MODE]:.2f}x")
    print(f"one at a time / pytest-evals: {med['pytest-evals, one at a time'] / med['pytest-evals']:.2f}x (goal >= 8x)")


if __name__ == "__main__":
    main()

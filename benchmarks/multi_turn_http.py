"""Multi-turn dialogues over HTTP: the plugin's windows vs a raw asyncio loop that runs every dialogue at once.

    python benchmarks/multi_turn_http.py [--dialogues 200] [--turns 4] [--concurrency 10] [--latency 0.1] [--repeats 3]

A local OpenAI-compatible stub server (tests/stubserver.py) answers every streamed chat completion with
``echo:<the last message>`` after a fixed latency, so what is measured is the client: how many requests it
keeps in flight while each dialogue's next turn waits for its previous answer. Timed, alternating, each a
whole process as a user runs it:

- raw asyncio: a script in which every dialogue is a coroutine that sends its turns one after another
  (the whole history each time), all dialogues gathered at once, a semaphore of the concurrency,
  streaming as the plugin does (`python this-file --raw URL`: interpreter, imports, loop);
- pytest-evals: a suite of one case per dialogue (`model.conversation()`, `chat.say` per turn),
  `--evals-concurrency` of the same size (pytest's start-up, collection and summary included);
- pytest-evals, no other plugins: the same, with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -p pytest_evals.plugin``,
  as in an environment that has only pytest and pytest-evals (this machine's has hypothesis, anyio, trio,
  pytest-benchmark and pytest-cov plugins too, loaded at every pytest start-up);
- start-up: ``pytest --co`` over the same suite, both ways (interpreter, imports, plugins, collection);
- pytest-evals, one at a time: the same suite with `--evals-batch-size 1` (once: slow by design).

Prints medians, spreads and the ratios (goal: raw / plugin >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from http_concurrency import ALONE_MODE, plugin_time, stub_server

SUITE = '''
import pytest


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range({n}))
def test_dialogue(model, i):
    chat = model.conversation(max_tokens=8)
    for turn in range({turns}):
        assert chat.say(f"dialogue {{i}} turn {{turn}}").text == f"echo:dialogue {{i}} turn {{turn}}"
'''


async def raw(url: str, dialogues: int, turns: int, concurrency: int) -> None:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=2 * concurrency)) as client:
        async def say(messages: list[dict]) -> str:
            async with limit:
                text = []
                payload = {"model": "stub", "messages": messages, "max_tokens": 8, "stream": True}
                async with client.stream("POST", "/chat/completions", json=payload) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:") and line[5:].strip() != "[DONE]":
                            for choice in json.loads(line[5:])["choices"]:
                                text.append(choice.get("delta", {}).get("content") or "")
                return "".join(text)

        async def dialogue(i: int) -> None:
            messages: list[dict] = []
            for turn in range(turns):
                messages.append({"role": "user", "content": f"dialogue {i} turn {turn}"})
                answer = await say(messages)
                assert answer == f"echo:dialogue {i} turn {turn}", answer
                messages.append({"role": "assistant", "content": answer})

        await asyncio.gather(*(dialogue(i) for i in range(dialogues)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dialogues", type=int, default=200)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", metavar="URL", help="only run the raw loop against URL (the process timed)")
    args = parser.parse_args()
    if args.raw:
        asyncio.run(raw(args.raw, args.dialogues, args.turns, args.concurrency))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "test_dialogues.py").write_text(SUITE.format(n=args.dialogues, turns=args.turns))
        with stub_server(work, args.latency) as url:
            def plugin(*extra: str, alone: bool = False) -> float:
                return plugin_time(work, url, args.concurrency, *extra, alone=alone)

            def raw_process() -> float:
                start = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--raw", url, f"--dialogues={args.dialogues}",
                                f"--turns={args.turns}", f"--concurrency={args.concurrency}"], check=True, env=env)
                return time.perf_counter() - start

            times: dict[str, list[float]] = {"raw asyncio": [], "pytest-evals": [], ALONE_MODE: [],
                                             "start-up (pytest --co)": [], "start-up, alone": []}
            for _ in range(args.repeats):
                times["raw asyncio"].append(raw_process())
                times["pytest-evals"].append(plugin())
                times[ALONE_MODE].append(plugin(alone=True))
                times["start-up (pytest --co)"].append(plugin("--co"))
                times["start-up, alone"].append(plugin("--co", alone=True))
            times["pytest-evals, one at a time"] = [plugin("--evals-batch-size=1", "--evals-concurrency=1")]
    med = {m: statistics.median(v) for m, v in times.items()}
    requests = args.dialogues * args.turns
    print(f"{args.dialogues} dialogues x {args.turns} turns = {requests} streamed chat completions, server latency "
          f"{args.latency * 1000:.0f} ms, concurrency {args.concurrency} (at best "
          f"{requests * args.latency / args.concurrency:.1f} s); median, min-max over runs")
    print(f"{'mode':<30} {'wall s':>8} {'spread':>16} {'runs':>5}")
    for mode, values in times.items():
        print(f"{mode:<30} {med[mode]:8.2f} {min(values):7.2f}-{max(values):7.2f} {len(values):5d}")
    print(f"raw asyncio / pytest-evals: {med['raw asyncio'] / med['pytest-evals']:.2f}x (goal >= 0.8x), "
          f"with this environment's other pytest plugins loaded at start-up")
    print(f"raw asyncio / {ALONE_MODE}: {med['raw asyncio'] / med[ALONE_MODE]:.2f}x (goal >= 0.8x)")
    for mode, startup in (("pytest-evals", "start-up (pytest --co)"), (ALONE_MODE, "start-up, alone")):
        print(f"{mode}: after start-up {med[mode] - med[startup]:.2f} s, raw asyncio / that: "
              f"{med['raw asyncio'] / (med[mode] - med[startup]):.2f}x")
    print(f"one at a time / pytest-evals: {med['pytest-evals, one at a time'] / med['pytest-evals']:.2f}x")


if __name__ == "__main__":
    main()

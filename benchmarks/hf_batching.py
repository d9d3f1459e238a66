"""Batched vs one-at-a-time generation on the transformers backend, side by side in one run.

    python benchmarks/hf_batching.py [--prompts 32] [--max-tokens 16] [--repeats 3]

Prints the median wall time and output tokens/s of each mode, the ratio to one-at-a-time, and
whether the greedy outputs are identical. Modes are interleaved per repeat so machine noise hits
them alike. Uses the embedded default (SmolLM2-135M-Instruct) and the arithmetic suite's prompts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pytest_evals import load_jsonl
from pytest_evals.backends.base import BackendSettings, GenerateRequest
from pytest_evals.backends.hf import HFBackend
from pytest_evals.backends.specs import parse_spec

SUITES = Path(__file__).resolve().parent.parent / "example_suites"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,32")
    args = parser.parse_args()

    cases = load_jsonl(SUITES / "arithmetic.jsonl")[: args.prompts]
    requests = [GenerateRequest(f"Q: {c['question']} = ?\nA:", max_tokens=args.max_tokens) for c in cases]
    backend = HFBackend(parse_spec("smollm2"), BackendSettings(batch_size=1))
    backend.generate(requests[:2])  # warm-up

    modes = {"one at a time": 1, **{f"batch {b}": int(b) for b in args.batch_sizes.split(",")}}
    times: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for mode, size in modes.items():
            backend.batch_size = size
            start = time.perf_counter()
            if size == 1:
                replies = [backend.generate([r])[0] for r in requests]
            else:
                replies = backend.generate(requests)
            times[mode].append(time.perf_counter() - start)
            tokens[mode] = sum(r.completion_tokens for r in replies)
            texts[mode] = [r.text for r in replies]

    base = statistics.median(times["one at a time"])
    print(f"{len(requests)} prompts, max_tokens={args.max_tokens}, {args.repeats} repeats (median)")
    print(f"{'mode':<14} {'wall s':>8} {'tokens/s':>9} {'speed-up':>9} {'same text':>10}")
    for mode in modes:
        wall = statistics.median(times[mode])
        same = texts[mode] == texts["one at a time"]
        print(f"{mode:<14} {wall:8.2f} {tokens[mode] / wall:9.1f} {base / wall:8.2f}x {str(same):>10}")


if __name__ == "__main__":
    main()

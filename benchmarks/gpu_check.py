"""The transformers backend on a CUDA GPU, checked against lm-evaluation-harness on the CPU, and xdist
workers pinned to GPUs.

Here (CPU, lm-eval installed):   python benchmarks/gpu_check.py --write-reference ref.json
On the GPU machine:              python benchmarks/gpu_check.py --reference ref.json
Pinned workers (any machine):    python benchmarks/gpu_check.py --pinned [--workers 2]

``--pinned`` runs a small generation suite through pytest with ``-n WORKERS --evals-gpus-per-worker 1``
on the embedded default (``device=cuda`` where CUDA is available) and prints the GPU header line and,
from the database, which worker ran how many cases on which GPUs with what peak GPU memory; with vLLM
installed it also runs the suite on ``vllm:`` once. On a machine without GPUs it shows that nothing is
pinned.

The reference file holds lm-evaluation-harness's ``hf`` loglikelihoods of a fixed set of pairs on the
embedded default. On the GPU the script loads the same model through the backend (device defaults
to cuda), prints the largest difference from the reference, whether batched and one-at-a-time greedy
generation agree, their throughput ratio, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time

PAIRS = [
    ["The capital of France is", " Paris"],
    ["The capital of France is ", "London"],
    ["Question: 2+2=?\nAnswer:", " 4"],
    ["Q: color of the sky?\nA: ", "blue sky"],
    ["Hello", " world, how are you today?"],
    ["", "Hello there"],
    ["A long context " * 20, " ends here."],
    ["Question: Which animal says moo?\nAnswer:", " cow"],
]


def write_reference(path: str) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from pytest_evals.backends.gguf_copies import dequantized_copy, embedded_gguf

    lm = HFLM(pretrained=str(dequantized_copy(embedded_gguf())), batch_size=4, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=tuple(p), idx=i) for i, p in enumerate(PAIRS)]
    values = lm.loglikelihood(instances, disable_tqdm=True)
    with open(path, "w") as fh:
        json.dump([{"pair": p, "logprob": v[0], "is_greedy": v[1]} for p, v in zip(PAIRS, values)], fh, indent=1)


def check(path: str) -> None:
    import torch

    from pytest_evals.backends.base import BackendSettings, GenerateRequest, LoglikelihoodRequest
    from pytest_evals.backends.hf import HFBackend
    from pytest_evals.backends.specs import parse_spec

    start = time.perf_counter()
    backend = HFBackend(parse_spec("smollm2"), BackendSettings(batch_size=8))
    print(f"device {backend.device} ({torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}), "
          f"load {time.perf_counter() - start:.1f} s")
    reference = json.load(open(path))
    results = backend.loglikelihood([LoglikelihoodRequest(*r["pair"]) for r in reference])
    diffs = [abs(r.logprob - ref["logprob"]) for r, ref in zip(results, reference)]
    greedy_same = all(r.is_greedy == ref["is_greedy"] for r, ref in zip(results, reference))
    print(f"loglikelihood vs lm-eval (CPU): max |diff| {max(diffs):.2e} over {len(diffs)} pairs; "
          f"is_greedy equal: {greedy_same}")

    prompts = [f"{a} + {b} =" for a in range(1, 9) for b in range(3, 7)]
    requests = [GenerateRequest(p, max_tokens=16) for p in prompts]
    backend.generate(requests[:4])
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    times = {}
    for size in (1, 32):
        backend.batch_size = size
        t = time.perf_counter()
        texts = [r.text for r in (backend.generate(requests) if size > 1 else [backend.generate([q])[0] for q in requests])]
        times[size] = (time.perf_counter() - t, texts)
    same = times[1][1] == times[32][1]
    mismatches = sum(a != b for a, b in zip(times[1][1], times[32][1]))
    print(f"generate {len(requests)} prompts x 16 tokens: one at a time {times[1][0]:.2f} s, batch 32 "
          f"{times[32][0]:.2f} s, speed-up {times[1][0] / times[32][0]:.1f}x; identical outputs: {same} "
          f"({mismatches} differ)")
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


PINNED_SUITE = '''
import os

import pytest

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("a", range(1, 17))
def test_add(model, a):
    reply = model.generate(f"2 + 3 = 5\\n6 + 1 = 7\\n{a} + {a} =", max_tokens=8, stop=["\\n"])
    assert reply.text.strip() == str(2 * a)
'''


def pinned(workers: int) -> None:
    import importlib.util
    import os
    import sqlite3
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = [f"smollm2?device={device}"]
    if device == "cuda" and importlib.util.find_spec("vllm") is not None:
        from pytest_evals.backends.gguf_copies import dequantized_copy, embedded_gguf

        specs.append(f"vllm:{dequantized_copy(embedded_gguf())}?gpu_memory_utilization=0.3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "test_pinned.py").write_text(PINNED_SUITE)
        for spec in specs:
            db = Path(folder, f"{spec.split(':')[0].split('?')[0]}.sqlite")
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(workers),
                       "--evals-gpus-per-worker", "1", f"--model={spec}", f"--evals-db={db}", "test_pinned.py"]
            start = time.perf_counter()
            out = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
            print(f"$ pytest -n {workers} --evals-gpus-per-worker 1 --model={spec}: exit {out.returncode}, "
                  f"{time.perf_counter() - start:.1f} s")
            for line in out.stdout.splitlines():
                if line.startswith(("evals-gpus", "evals: models", "test_pinned.py::test_add ", "created:")) or (
                        " passed" in line and line.startswith("=")):
                    print("  " + line)
            if not db.exists():
                print(out.stdout[-2000:], out.stderr[-2000:])
                continue
            con = sqlite3.connect(db)
            for worker, gpus, cases, outcomes in con.execute(
                    "SELECT worker, gpus, count(*), group_concat(DISTINCT outcome) FROM cases GROUP BY 1, 2"):
                print(f"  worker {worker}: CUDA_VISIBLE_DEVICES={gpus}, {cases} cases ({outcomes})")
            peak = con.execute("SELECT count(gpu_peak_mib), max(gpu_peak_mib) FROM calls").fetchone()
            print(f"  calls with a GPU memory figure: {peak[0]}, peak {peak[1] or 0:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-reference", metavar="FILE")
    group.add_argument("--reference", metavar="FILE")
    group.add_argument("--pinned", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.pinned:
        pinned(args.workers)
    else:
        write_reference(args.write_reference) if args.write_reference else check(args.reference)

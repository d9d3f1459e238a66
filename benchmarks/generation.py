"""Generation across pytest cases vs a raw batched loop, on the embedded default (CPU).

    python benchmarks/generation.py [--prompts 256] [--max-tokens 16] [--batch-size 8] [--repeats 2]

Three whole processes, timed from start to exit (imports, model load, generation), alternating:

- raw loop: a script that sorts the prompts by length and runs transformers' greedy ``generate`` on
  left-padded batches of the batch size, the fastest plain way to do this work;
- pytest-evals: a suite of one case per prompt (``model.generate``), batched across cases;
- pytest-evals, batch size 1: the same suite, one call at a time.

Prints medians and spreads, the ratios (goals: raw / plugin >= 0.85, plugin batch 1 / plugin >= 2),
and whether every case's text equals the raw loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAW = '''
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompts_file, batch_size, max_tokens, out_file = sys.argv[1:6]
prompts = json.load(open(prompts_file))
tokenizer = AutoTokenizer.from_pretrained(folder)
tokenizer.padding_side = "left"
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(folder).eval()
order = sorted(range(len(prompts)), key=lambda i: -len(tokenizer(prompts[i]).input_ids))
texts = [None] * len(prompts)
with torch.inference_mode():
    for start in range(0, len(order), int(batch_size)):
        chunk = order[start:start + int(batch_size)]
        encoded = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(**encoded, max_new_tokens=int(max_tokens), do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        for i, row in zip(chunk, output):
            generated = row[encoded.input_ids.shape[1]:].tolist()
            eos = tokenizer.eos_token_id
            if eos in generated:
                generated = generated[: generated.index(eos) + 1]
            texts[i] = tokenizer.decode(generated, skip_special_tokens=True)
json.dump(texts, open(out_file, "w"))
'''

SUITE = '''
import json

import pytest

PROMPTS = json.load(open({prompts!r}))


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_generate(model, i):
    assert model.generate(PROMPTS[i], max_tokens={max_tokens}).text is not None
'''


def prompts(n: int) -> list[str]:
    shots = "2 + 3 = 5\\n9 - 4 = 5\\n6 * 3 = 18\\n"
    ops = ["+", "-", "*"]
    return [f"{shots}{7 + i * 3 % 97} {ops[i % 3]} {i % 13 + 2} =" + (" Answer:" if i % 4 == 0 else "")
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from pytest_evals.backends.gguf_copies import dequantized_copy, embedded_gguf

    folder = dequantized_copy(embedded_gguf())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts_file = work / "prompts.json"
        prompts_file.write_text(json.dumps(prompts(args.prompts)))
        (work / "raw.py").write_text(RAW)
        (work / "test_generation.py").write_text(SUITE.format(prompts=str(prompts_file), max_tokens=args.max_tokens))
        spec = f"--model=hf:{folder}"
        modes = {
            "raw loop": lambda r: [sys.executable, "raw.py", str(folder), str(prompts_file), str(args.batch_size),
                                   str(args.max_tokens), f"raw{r}.json"],
            "pytest-evals": lambda r: [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", spec,
                                       f"--evals-batch-size={args.batch_size}", f"--evals-db=batched{r}.sqlite"],
            "pytest-evals, batch 1": lambda r: [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", spec,
                                                "--evals-batch-size=1", f"--evals-db=single{r}.sqlite"],
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        for repeat in range(args.repeats):
            for mode, command in modes.items():
                start = time.perf_counter()
                out = subprocess.run(command(repeat), cwd=work, env=env, capture_output=True, text=True)
                times[mode].append(time.perf_counter() - start)
                if out.returncode != 0:
                    raise SystemExit(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        raw = json.loads((work / "raw0.json").read_text())

        def texts(db: str) -> list[str]:
            rows = sqlite3.connect(work / db).execute("SELECT nodeid, output_text FROM cases").fetchall()
            by_index = {int(n.split("[")[1].split("-")[0]): t or "" for n, t in rows}
            return [by_index[i] for i in range(len(raw))]

        same_batched = sum(a == b for a, b in zip(texts("batched0.sqlite"), raw))
        same_single = sum(a == b for a, b in zip(texts("single0.sqlite"), raw))
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"{args.prompts} prompts x {args.max_tokens} new tokens, greedy, batch size {args.batch_size}, "
          f"{args.repeats} runs each, alternating (median, min-max), whole processes")
    print(f"{'mode':<24} {'wall s':>8} {'spread':>16}")
    for mode, values in times.items():
        print(f"{mode:<24} {med[mode]:8.2f} {min(values):7.2f}-{max(values):7.2f}")
    print(f"raw loop / pytest-evals: {med['raw loop'] / med['pytest-evals']:.2f}x (goal >= 0.85x)")
    print(f"pytest-evals batch 1 / pytest-evals: {med['pytest-evals, batch 1'] / med['pytest-evals']:.2f}x (goal >= 2x)")
    print(f"texts equal to the raw loop's: batched {same_batched}/{len(raw)}, batch 1 {same_single}/{len(raw)}")


if __name__ == "__main__":
    main()

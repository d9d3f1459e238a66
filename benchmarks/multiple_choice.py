"""The multiple-choice suite through the plugin vs lm-evaluation-harness on the same model and items.

    python benchmarks/multiple_choice.py [--repeats 3] [--batch-size 8]

lm-evaluation-harness (`pip install lm-eval`) runs `--model hf` on the embedded default's dequantized
folder with a custom task over `example_suites/multiple_choice.jsonl` (the same prompt,
"Question: ...\\nAnswer:", and the same choices after a space); the plugin runs
`example_suites/test_multiple_choice.py` on the same folder. Both are timed as whole processes (start-up,
import, model load, scoring), alternating, on the CPU, with the same batch size. The table shows the
median and spread of each, their ratio, and the accuracy each reported.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "example_suites" / "multiple_choice.jsonl"

TASK = """task: pytest_evals_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return elapsed, out.stdout + out.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    from pytest_evals.backends.gguf_copies import dequantized_copy, embedded_gguf

    folder = dequantized_copy(embedded_gguf())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "task.yaml").write_text(TASK.format(data=DATA))
        lm_eval = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                   f"pretrained={folder},dtype=float32", "--tasks", "pytest_evals_mc", "--include_path", str(work),
                   "--batch_size", str(args.batch_size), "--device", "cpu"]
        times: dict[str, list[float]] = {"lm-evaluation-harness": [], "pytest-evals": []}
        accuracy: dict[str, float] = {}
        for repeat in range(args.repeats):
            db = work / f"run{repeat}.sqlite"
            plugin = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(DATA.parent / "test_multiple_choice.py"),
                      f"--model=hf:{folder}?dtype=float32", f"--evals-batch-size={args.batch_size}", f"--evals-db={db}"]
            for mode, command in (("lm-evaluation-harness", lm_eval), ("pytest-evals", plugin)):
                elapsed, output = timed(command, work, env)
                times[mode].append(elapsed)
                if mode == "pytest-evals":
                    con = sqlite3.connect(db)
                    (passed, n), = con.execute("SELECT sum(outcome = 'passed'), count(*) FROM cases").fetchall()
                    accuracy[mode] = passed / n
                else:
                    match = re.search(r"\|acc\s*\|[^|]*\|\s*([0-9.]+)", output)
                    accuracy[mode] = float(match.group(1)) if match else float("nan")
    print(f"{DATA.name}: 60 questions, 240 loglikelihood requests; batch size {args.batch_size}; "
          f"{args.repeats} runs each, alternating (median, min-max)")
    print(f"{'tool':<24} {'wall s':>8} {'spread':>14} {'accuracy':>9}")
    for mode, values in times.items():
        print(f"{mode:<24} {statistics.median(values):8.2f} {min(values):6.2f}-{max(values):6.2f} {accuracy[mode]:9.3f}")
    ratios = [p / l for p, l in zip(times["pytest-evals"], times["lm-evaluation-harness"])]
    print(f"pytest-evals / lm-evaluation-harness wall time: {statistics.median(ratios):.2f}x "
          f"(per run: {', '.join(f'{r:.2f}' for r in ratios)}; goal <= 0.8x)")


if __name__ == "__main__":
    main()

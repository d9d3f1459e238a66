"""lm-evaluation-harness tasks as pytest cases, checked against lm-evaluation-harness's own run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import embedded_gguf_path, require, require_hf

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("The capital of France is", ["Paris", "Rome", "Berlin"], 0),
    ("Two plus two equals", ["four", "seven", "nine"], 0),
    ("The sky on a clear day is", ["green", "blue", "red"], 1),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin", "Newton"], 0),
    ("A dog says", ["meow", "woof", "moo"], 1),
    ("The opposite of hot is", ["warm", "cold", "big"], 1),
    ("Bananas are usually", ["yellow", "purple", "black"], 0),
    ("The largest ocean is the", ["Atlantic", "Indian", "Pacific"], 2),
    ("Monday comes before", ["Sunday", "Tuesday", "Friday"], 1),
    ("A triangle has three", ["sides", "wheels", "legs"], 0),
    ("Snow is", ["hot", "black", "white"], 2),
    ("The sun rises in the", ["north", "east", "west"], 1),
]
SUMS = [(a, b) for a, b in ((1, 1), (2, 3), (4, 4), (5, 2), (3, 6), (7, 1), (2, 2), (6, 3))]

MC_TASK = """task: evals_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    train: {folder}/mc_train.jsonl
    test: {folder}/mc_test.jsonl
test_split: test
fewshot_split: train
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_TASK = """task: evals_local_sums
dataset_path: json
dataset_kwargs:
  data_files:
    train: {folder}/sums_train.jsonl
    test: {folder}/sums.jsonl
test_split: test
fewshot_split: train
num_fewshot: 3
fewshot_delimiter: "\n"
output_type: generate_until
doc_to_text: "{{{{a}}}} + {{{{b}}}} ="
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
"""

SUITE = """
import os
import pytest
from pytest_evals.lmeval import load_task

MC = load_task("evals_local_mc", include_path=os.environ["TASKS"])
SUMS = load_task("evals_local_sums", include_path=os.environ["TASKS"])

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("doc", MC.docs)
def test_mc(model, evals_score, doc):
    MC.check(model, doc, evals_score)

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("doc", SUMS.docs)
def test_sums(model, evals_score, doc):
    SUMS.check(model, doc, evals_score)
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    (folder / "mc_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (folder / "mc_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    (folder / "sums.jsonl").write_text("".join(json.dumps({"a": a, "b": b, "answer": str(a + b)}) + "\n"
                                               for a, b in SUMS))
    (folder / "sums_train.jsonl").write_text("".join(json.dumps({"a": a, "b": b, "answer": str(a + b)}) + "\n"
                                                     for a, b in ((1, 2), (3, 3), (4, 1), (2, 5))))
    (folder / "mc.yaml").write_text(MC_TASK.format(folder=folder))
    (folder / "sums.yaml").write_text(GEN_TASK.format(folder=folder))
    return folder


def test_a_local_task_gives_one_case_per_document_with_its_requests(tasks: Path) -> None:
    require("lm_eval", "pip install lm-eval")
    from pytest_evals.lmeval import load_task

    mc = load_task("evals_local_mc", include_path=tasks)
    assert [d.id for d in mc.docs] == [f"doc{i}" for i in range(8)] and mc.num_fewshot == 2
    kind, requests = mc.requests(mc.docs[0])
    assert kind == "multiple_choice" and [cont for _, cont in requests] == [" meow", " woof", " moo"]
    context = requests[0][0]
    assert context.endswith("Question: A dog says\nAnswer:") and context.count("Question:") == 3  # 2 shots
    with pytest.raises(ValueError, match="lm-eval task nope: not found"):
        load_task("nope", include_path=tasks)


@pytest.fixture(scope="module")
def model_folder() -> Path:
    """The embedded default's dequantized folder (found before pytester moves HOME, where the copy lives)."""
    require_hf()
    from pytest_evals.backends.gguf_copies import dequantized_copy

    return dequantized_copy(embedded_gguf_path())


def test_accuracy_and_choices_equal_lm_evaluation_harness_own_run(model_folder: Path, tmp_path: Path, tasks: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # no pytester here: its fixture drops at teardown the modules imported meanwhile, and lm-eval's run
    # below imports parts of torch that cannot be imported twice in one process
    lm_eval = require("lm_eval", "pip install lm-eval")
    from lm_eval.tasks import TaskManager

    folder = model_folder
    monkeypatch.setenv("TASKS", str(tasks))
    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    (tmp_path / "test_tasks.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py",
                          f"--model=hf:{folder}?dtype=float32"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode in (0, 1) and " passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]

    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["evals_local_mc", "evals_local_sums"],
        task_manager=TaskManager(include_path=str(tasks)), batch_size=8, device="cpu", log_samples=True)
    con = sqlite3.connect(tmp_path / ".evals" / "evals.sqlite")
    assert con.execute("SELECT count(*) FROM cases WHERE outcome IN ('passed', 'failed')").fetchone() == (16,)
    ours = {nodeid.split("[")[1].split("-")[0]: (json.loads(scores), output)
            for nodeid, scores, output in con.execute(
                "SELECT nodeid, scores, output_text FROM cases WHERE nodeid LIKE '%test_mc%'")}
    agreed = 0
    for sample in theirs["samples"]["evals_local_mc"]:
        scores, output = ours[f"doc{sample['doc_id']}"]
        assert scores["acc"] == sample["acc"] and scores["acc_norm"] == sample["acc_norm"], sample["doc_id"]
        their_lls = [float(r[0]) for r in sample["filtered_resps"]]
        our_lls = [float(v) for v in output.split()]
        assert max(range(3), key=our_lls.__getitem__) == max(range(3), key=their_lls.__getitem__)
        assert our_lls == pytest.approx(their_lls, abs=1e-3)
        agreed += 1
    assert agreed == 8
    our_acc = sum(s["acc"] for s, _ in ours.values()) / len(ours)
    assert our_acc == pytest.approx(theirs["results"]["evals_local_mc"]["acc,none"])
    sums = {nodeid.split("[")[1].split("-")[0]: json.loads(scores) for nodeid, scores in con.execute(
        "SELECT nodeid, scores FROM cases WHERE nodeid LIKE '%test_sums%'")}
    texts = {nodeid.split("[")[1].split("-")[0]: text for nodeid, text in con.execute(
        "SELECT c.nodeid, k.output_text FROM cases c JOIN calls k ON k.case_id = c.id WHERE c.nodeid LIKE '%test_sums%'")}
    for sample in theirs["samples"]["evals_local_sums"]:
        doc = f"doc{sample['doc_id']}"
        assert sums[doc]["exact_match__first_number"] == sample["exact_match"], sample
        assert texts[doc] == sample["resps"][0][0], sample  # the same generated text, not only the same score
    sums_ours = sum(s["exact_match__first_number"] for s in sums.values()) / len(sums)
    print(f"agreement: mc acc {our_acc:.3f} (lm-eval {theirs['results']['evals_local_mc']['acc,none']:.3f}), "
          f"{agreed} of 8 documents the same choice; sums exact_match {sums_ours:.3f} (lm-eval "
          f"{theirs['results']['evals_local_sums']['exact_match,first-number']:.3f})")

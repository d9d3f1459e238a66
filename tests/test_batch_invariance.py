"""Answers that do not depend on the batch: the example suites on the embedded default (float32, CPU) give the
same greedy texts, the same chosen options and the same log-probabilities (within TOLERANCE) at batch size 1
as at the default windows. docs/batch-invariance.md states the guarantee; benchmarks/batch_invariance.py
checks it over every case of every example suite."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import require_hf

from pytest_evals.backends.gguf_copies import home

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # log-probabilities (nats): float32 batches of other shapes sum in another order
COPIES = home()  # read before pytester points HOME at its folder: the runs load the copy made before


def _check_script():
    """benchmarks/batch_invariance.py, whose comparison this test shares (one function serves both)."""
    spec = importlib.util.spec_from_file_location("batch_invariance", ROOT / "benchmarks" / "batch_invariance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SUITE = r'''
from typing import Literal

import pytest

from pytest_evals import load_jsonl

DATA = EXAMPLE_SUITES
FEW_SHOT = "2 + 3 = 5\n9 - 4 = 5\n6 * 3 = 18\n21 + 14 = 35\n"


def calculate(a: float, op: Literal["+", "-", "*", "/"], b: float) -> float:
    """Do one arithmetic operation.

    Args:
        a: The left operand.
        op: The operation.
        b: The right operand.
    """
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("case", load_jsonl(DATA + "/arithmetic.jsonl")[:6], ids=lambda c: c["id"])
def test_arithmetic(model, case):
    model.generate(f"{FEW_SHOT}{case['question']} =", max_tokens=8, stop=["\n"])


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("case", load_jsonl(DATA + "/multiple_choice.jsonl")[:6], ids=lambda c: c["id"])
def test_multiple_choice(model, case):
    context = f"Question: {case['question']}\nAnswer:"
    model.choose(context, [f" {choice}" for choice in case["choices"]], answer=case["answer"])
    model.loglikelihood(context, " " + case["choices"][case["answer"]])


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("dialogue", load_jsonl(DATA + "/multi_turn.jsonl")[:3], ids=lambda d: d["id"])
def test_chat(model, dialogue):
    chat = model.conversation(system=dialogue["system"], max_tokens=10)
    for text in dialogue["turns"][:2]:
        chat.say(text)


@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("question", ["What is 12 plus 30?", "What is 7 times 8?", "What is 100 minus 37?"])
def test_forced_tool_call(model, question):
    model.chat(question, tools=[calculate], tool_choice="required", max_tokens=16)
'''


def test_answers_at_batch_size_1_equal_those_of_the_default_windows(pytester: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample of the example suites' data: greedy completions after a shared few-shot prefix, multiple
    choice and a loglikelihood (right-padded batches), two-turn chats (the second turn continues the first's
    kept rows) and forced tool calls (the tool and its enum argument chosen over the tools prompt's shared
    prefix, the rest greedy), run at batch size 1 and at the defaults."""
    require_hf()
    check = _check_script()
    monkeypatch.setenv("PYTEST_EVALS_CACHE", str(COPIES))
    pytester.makepyfile(test_sample=SUITE.replace("EXAMPLE_SUITES", repr(str(ROOT / "example_suites"))))
    db = pytester.path / "runs.sqlite"
    for extra in (check.ONE_AT_A_TIME, ()):
        result = pytester.runpytest_subprocess("--model=smollm2", "-p", "no:cacheprovider", f"--evals-db={db}", *extra)
        assert result.ret == 0, result.stdout.str()[-2000:]
    con = sqlite3.connect(db)
    batched = dict(con.execute("SELECT run_id, total(batched) FROM calls GROUP BY run_id").fetchall())
    con.close()
    assert batched[1] == 0 and batched[2] > 0  # run 1 called one at a time; run 2 shared batches across cases
    found = check.compare_runs(db, 1, 2, TOLERANCE)
    assert found.differences == [] and found.flips == []
    assert (found.cases, found.texts, found.choices, found.log_probabilities) == (18, 6 + 3 * 2 + 3 * 2, 6, 6 * 4 + 6)
    assert found.largest <= TOLERANCE

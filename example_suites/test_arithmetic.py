"""Arithmetic by raw completion: a few-shot prompt; the reply's first line must be the answer."""

import pytest

from pytest_evals import load_jsonl

CASES = load_jsonl(__file__, "arithmetic.jsonl")
FEW_SHOT = "2 + 3 = 5\n9 - 4 = 5\n6 * 3 = 18\n21 + 14 = 35\n"


@pytest.mark.evals_threshold(0.5)  # calibrated on the embedded default (about 62%)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_arithmetic(model, case):
    reply = model.generate(f"{FEW_SHOT}{case['question']} =", max_tokens=8, stop=["\n"])
    assert reply.text.strip() == case["answer"]

"""Arithmetic by raw completion: a few-shot prompt, the first line of the reply must be the answer."""

import pytest

from pytest_evals import load_jsonl

CASES = load_jsonl(__file__, "arithmetic.jsonl")
FEW_SHOT = "Q: 2 + 3 = ?\nA: 5\nQ: 9 - 4 = ?\nA: 5\nQ: 6 * 3 = ?\nA: 18\nQ: 21 + 14 = ?\nA: 35\n"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_arithmetic(model, case):
    reply = model.generate(f"{FEW_SHOT}Q: {case['question']} = ?\nA:", max_tokens=8, stop=["\n"])
    assert reply.text.strip() == case["answer"]

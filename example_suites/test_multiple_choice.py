"""Multiple choice by loglikelihood: the most likely answer among the choices must be the right one."""

import pytest

from pytest_evals import load_jsonl

CASES = load_jsonl(__file__, "multiple_choice.jsonl")


@pytest.mark.evals_task("loglikelihood")  # a chat-only server: --evals-route loglikelihood=smollm2
@pytest.mark.evals_threshold(0.5)  # calibrated on the embedded default (about 62%)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_multiple_choice(model, case):
    context = f"Question: {case['question']}\nAnswer:"
    # answer= is only recorded: the report shows the option picked and the right one
    picked = model.choose(context, [f" {choice}" for choice in case["choices"]], answer=case["answer"])
    assert case["choices"][picked] == case["choices"][case["answer"]]

"""Free-form answers graded by a judge model against a rubric on a 1-5 scale (LLM-as-judge).

The model under evaluation answers each question in a sentence; the `judge` fixture (a second model)
grades the answer against the question's rubric, after two graded examples that show the reply format
(`pytest_evals.judging.rubric_prompt`). The grade is parsed robustly
(`pytest_evals.judging.parse_grade`): a judge reply that states no grade from 1 to 5 ends the case as an
error (the judge failed), never as a grade of 0. Each case records `grade` (1-5); it passes at 4 or above.

The judge is the embedded default unless you name another: edit `JUDGE` below, or remove the marker and
pass `--evals-judge SPEC` (e.g. `--evals-judge openai:gpt-4o-mini@https://api.openai.com/v1`).
"""

import pytest

from pytest_evals import load_dataset
from pytest_evals.judging import parse_grade, rubric_prompt

CASES = load_dataset(__file__, "judged.jsonl")
JUDGE = "smollm2"  # a 135M model does not judge (see below); name a stronger judge for grades worth gating on


# Calibrated on the embedded default as model and judge (2026-11-29): all 12 replies parsed, and every grade
# was 1: SmolLM2-135M repeats the grade of the prompt's last example instead of judging. This gate (pass
# rate >= 0, mean grade >= 1) therefore checks only that the suite runs and every grade parses; raise it
# once a real judge is named.
@pytest.mark.evals_judge(JUDGE)
@pytest.mark.evals_threshold(0.0, grade=1.0)
@pytest.mark.parametrize("case", CASES)
def test_judged(model, judge, evals_score, case):
    answer = model.chat(case["question"] + " Answer in one sentence.", max_tokens=48).text.strip()
    verdict = judge.generate(rubric_prompt(case["question"], answer, case["rubric"]), max_tokens=4, stop=["\n"]).text
    grade = parse_grade(verdict)  # GradeError (an error, not a 0) when the reply states no grade
    evals_score(grade=float(grade))
    assert grade >= 4, f"graded {grade}: {answer!r}"

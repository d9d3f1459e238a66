"""The judge's grade: parsed robustly; a reply without a grade is an error, never a 0."""

from __future__ import annotations

import pytest
from conftest import FAKE_BACKEND, rows

from pytest_evals.judging import GradeError, parse_grade, rubric_prompt


@pytest.mark.parametrize("reply, grade", [
    ("4", 4), (" 4\n", 4), ("Grade: 4", 4), ("4/5", 4), ("**5**", 5), ("four", 4), ("I give it a 5.", 5),
    ("3/10, no: 2", 2), ("Grade 3.", 3), ("2) partly right", 2),
])
def test_a_stated_grade_is_read(reply: str, grade: int) -> None:
    assert parse_grade(reply) == grade


@pytest.mark.parametrize("reply", ["", "no idea", "10", "4.5", "0", "7/10"])
def test_a_reply_without_a_grade_on_the_scale_is_an_error(reply: str) -> None:
    with pytest.raises(GradeError, match="the judge's reply states no grade from 1 to 5"):
        parse_grade(reply)


def test_the_prompt_names_the_rubric_and_the_scale() -> None:
    prompt = rubric_prompt("Capital of France?", "Paris.", "5 if Paris", 1, 5)
    assert prompt.endswith("Question: Capital of France?\nAnswer: Paris.\nRubric: 5 if Paris\nGrade:")
    assert "from 1 (worst) to 5 (best)" in prompt and "Grade: 5\n" in prompt and "Grade: 1\n" in prompt


GRADER = FAKE_BACKEND + '''
import os


class Grader(FakeBackend):
    def generate(self, requests):
        return [Reply(text=os.environ["GRADER_REPLY"], prompt_tokens=1, completion_tokens=1) for _ in requests]


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
    register("grader", Grader)
'''


@pytest.mark.parametrize("reply, outcome", [("Grade: 5", "passed"), ("2", "failed"), ("I cannot say", "error")])
def test_a_judged_case_passes_fails_or_errors_on_its_grade(pytester: pytest.Pytester, monkeypatch, reply: str,
                                                           outcome: str) -> None:
    pytester.makeconftest(GRADER)
    pytester.makepyfile(test_j="""
        import pytest
        from pytest_evals.judging import parse_grade, rubric_prompt

        @pytest.mark.evals_judge("grader:g")
        def test_graded(model, judge, evals_score):
            answer = model.generate("q").text
            grade = parse_grade(judge.generate(rubric_prompt("q", answer, "any")).text)
            evals_score(grade=float(grade))
            assert grade >= 4
        """)
    monkeypatch.setenv("GRADER_REPLY", reply)
    pytester.runpytest("--model=fake:m")
    assert rows(pytester, "SELECT outcome FROM cases") == [(outcome,)]
    if outcome == "error":
        (error,) = rows(pytester, "SELECT error FROM cases")[0]
        assert "GradeError: the judge's reply states no grade from 1 to 5: 'I cannot say'" in error

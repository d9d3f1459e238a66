"""Grading free-form answers with a judge model: a rubric prompt on a fixed scale, and a robust parse.

    grade = parse_grade(judge.generate(rubric_prompt(question, answer, rubric), max_tokens=8).text)

``parse_grade`` reads the first grade on the scale that the reply states (``4``, ``Grade: 4``,
``4/5``, ``**4**``, ``four``); a reply that states none, or only numbers off the scale, raises
:class:`GradeError`, so the case ends as an ``error`` (the judge failed), never as a grade of 0.
"""

from __future__ import annotations

import re

WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
         "ten": 10}
_NUMBER = re.compile(r"(?<![\d.])(\d+)(?:\s*/\s*(\d+))?(?!\d|\.\d)|\b(" + "|".join(WORDS) + r")\b", re.IGNORECASE)


class GradeError(Exception):
    """The judge's reply states no grade on the scale: the case is an error, not a low grade."""


def parse_grade(reply: str, low: int = 1, high: int = 5) -> int:
    """The grade a judge's reply states, on the scale ``low``..``high``."""
    for match in _NUMBER.finditer(reply or ""):
        digits, denominator, word = match.groups()
        if denominator is not None and int(denominator) != high:
            continue  # "3/10" on a 1-5 scale is not a grade of 3
        value = WORDS[word.lower()] if word else int(digits)
        if low <= value <= high:
            return value
    shown = " ".join((reply or "").split())[:80]
    raise GradeError(f"the judge's reply states no grade from {low} to {high}: {shown!r}")


EXAMPLES = (  # two graded answers, one at each end of the scale, so that even a small judge replies with a grade
    ("What is two plus two?", "Two plus two is four.", "{high} if it says four, {low} otherwise.", "{high}"),
    ("What colour is grass?", "Grass is purple.", "{high} if it says green, {low} otherwise.", "{low}"),
)


def rubric_prompt(question: str, answer: str, rubric: str, low: int = 1, high: int = 5) -> str:
    """A grading prompt: the scale, two graded examples, then the rubric, question and answer to grade,
    ending where the grade goes (for ``judge.generate``)."""
    shots = "".join(
        f"Question: {q}\nAnswer: {a}\nRubric: {r.format(low=low, high=high)}\nGrade: {g.format(low=low, high=high)}\n\n"
        for q, a, r, g in EXAMPLES)
    return (f"Grade each answer from {low} (worst) to {high} (best) by its rubric.\n\n{shots}"
            f"Question: {question}\nAnswer: {answer}\nRubric: {rubric}\nGrade:")

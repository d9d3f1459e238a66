"""Which sample of a repeated case a model answers, and the check that its samples can differ.

``--evals-repeat N`` / ``@pytest.mark.evals_repeat(N)`` (``session.repeats``) run each case N times;
each sample's ``Model`` knows its :class:`Sample`, so its calls are cached and shared apart from the
other samples', and a call at temperature 0 (every sample the same answer) is refused with
:class:`GreedyRepeat` unless greedy samples are meant.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKER = "evals_repeat"  # the marker the refusal names


class GreedyRepeat(Exception):
    """A repeated case sampled at temperature 0: every sample would be the same answer."""


class GreedyOnce(Exception):
    """A later sample of a case that ``--evals-repeat`` repeats, at a greedy call: the first sample's answer
    is every sample's, so this one is skipped (the case runs once) rather than failing the run."""


@dataclass(frozen=True)
class Sample:
    """The parameter of one sample: which of how many, and whether greedy samples are meant."""

    index: int  # from 0
    count: int
    greedy: bool = False
    once_if_greedy: bool = False  # --evals-repeat (not the test's own marker): a greedy case runs once

    @property
    def id(self) -> str:
        return sample_id(self.index, self.count)


def sample_id(index: int, count: int) -> str:
    return f"s{index + 1}of{count}"



def greedy_once_line(count: int, shown: str) -> str:
    return (f"greedy: {shown} asks for temperature 0, so all {count} samples would be the same answer: the case "
            f"runs once (sample 1); --evals-repeat-greedy repeats it anyway")


def greedy_line(count: int, shown: str) -> str:
    return (f"{shown} asks for temperature 0 in a case repeated {count} times, so every sample would be the same "
            f"answer; pass temperature > 0 to the call, or say greedy samples are meant: "
            f"@pytest.mark.{MARKER}({count}, greedy=True) or --evals-repeat-greedy")

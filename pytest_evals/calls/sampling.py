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


@dataclass(frozen=True)
class Sample:
    """The parameter of one sample: which of how many, and whether greedy samples are meant."""

    index: int  # from 0
    count: int
    greedy: bool = False

    @property
    def id(self) -> str:
        return sample_id(self.index, self.count)


def sample_id(index: int, count: int) -> str:
    return f"s{index + 1}of{count}"



def greedy_line(count: int, shown: str) -> str:
    return (f"{shown} asks for temperature 0 in a case repeated {count} times, so every sample would be the same "
            f"answer; pass temperature > 0 to the call, or say greedy samples are meant: "
            f"@pytest.mark.{MARKER}({count}, greedy=True) or --evals-repeat-greedy")

"""Repeated samples of a case: ``--evals-repeat N`` and ``@pytest.mark.evals_repeat(N)``.

Each sample is a test of its own (``test_x[case-smollm2-s2of5]``): its own outcome, record, case key
(so ``--evals-resume`` treats it as its own unit) and call-cache key (the sample index is in it, so
the samples of a case are not one cached answer). The controller groups a case's samples: its pass
rate over samples, the unbiased pass@k for k = 1..N (Chen et al., 2021: 1 - C(n-c, k) / C(n, k)), and
whether its samples disagree (flaky). A benchmark's pass rate and metrics are then means over cases of
each case's mean over its samples, with a bootstrap interval that resamples cases, so samples of one
case are not counted as independent evidence.

Sampling a call at temperature 0 N times gives one answer N times. Under ``--evals-repeat`` (a whole
suite, some of whose tests are greedy) such a case runs once: its first sample runs, the others are
skipped and the summary says so. A test's own ``evals_repeat`` marker asks for samples of that test, so
there a greedy call is a usage error unless the marker says ``greedy=True`` (or ``--evals-repeat-greedy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ..calls.sampling import MARKER, sample_id
from ..errors import ConfigError

SAMPLE_PARAM = "evals_sample"  # the parameter that carries (index, count) on each sample


class RepeatError(ConfigError):
    """A bad evals_repeat marker or --evals-repeat value."""


@dataclass(frozen=True)
class Repeat:
    count: int
    greedy: bool = False  # the user means N samples at temperature 0 (e.g. to measure nondeterminism)
    from_option: bool = False  # --evals-repeat / ini, not the test's marker: a greedy case runs once


def repeat_from_marker(mark: pytest.Mark, where: str) -> Repeat:
    try:
        return _checked(Repeat(*mark.args, **mark.kwargs), where, f"@pytest.mark.{MARKER}")
    except TypeError as exc:
        raise RepeatError(f"{where}: @pytest.mark.{MARKER}(): {str(exc).replace('Repeat.__init__() ', '')}; "
                          f"e.g. @pytest.mark.{MARKER}(5) or @pytest.mark.{MARKER}(5, greedy=True)") from None


def _checked(repeat: Repeat, where: str, what: str) -> Repeat:
    if isinstance(repeat.count, bool) or not isinstance(repeat.count, int) or repeat.count < 1:
        raise RepeatError(f"{where}: {what}({repeat.count!r}): the number of samples must be a whole number, at least 1")
    return repeat


def repeat_from_option(count: int | None, greedy: bool) -> Repeat | None:
    if count is None:
        return None
    return _checked(Repeat(count, greedy, from_option=True), "--evals-repeat", "--evals-repeat")


def case_of(nodeid: str, index: int, count: int) -> str:
    """The nodeid of the case a sample belongs to: the sample's id taken out of the brackets."""
    sid = sample_id(index, count)
    if nodeid.endswith(f"-{sid}]"):
        return nodeid[: -len(sid) - 2] + "]"
    return nodeid.replace(f"[{sid}]", "")

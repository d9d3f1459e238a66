"""The suite's own helpers (conftest.py): a missing part skips a developer's run and fails CI's."""

from __future__ import annotations

import pytest
from conftest import in_ci, missing, require


@pytest.mark.parametrize("value, ci", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    # CI=false is a developer saying "not CI": a plain os.environ.get("CI") took it for CI
    ("false", False), ("0", False), ("", False), ("no", False),
])
def test_only_a_true_ci_value_is_ci(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_without_ci_set_it_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not in_ci()


def ending(call) -> tuple[str, str]:
    """How ``call`` ends the test: "skip" or "fail", and its message. Caught here, not by pytest.raises: a
    skip escaping ``pytest.raises(pytest.fail.Exception)`` would end this test as skipped, not failed."""
    try:
        call()
    except pytest.skip.Exception as exc:
        return "skip", str(exc.msg)
    except pytest.fail.Exception as exc:
        return "fail", str(exc.msg)
    return "returned", ""


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_a_missing_part_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert ending(lambda: missing("chromium is gone")) == ("skip", "chromium is gone")
    assert ending(lambda: require("no_such_module_for_evals", "pip install it")) == (
        "skip", "no_such_module_for_evals is not installed (pip install it)")


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_a_missing_part_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert ending(lambda: missing("chromium is gone")) == ("fail", "chromium is gone")
    assert ending(lambda: require("no_such_module_for_evals", "pip install it")) == (
        "fail", "no_such_module_for_evals is not installed (pip install it)")

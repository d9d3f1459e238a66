"""What a run prints: a wrong answer is one line and a category of its own (``wrong``) while --lf, -x,
JUnit and the exit status keep pytest's meaning; the evals summary ends the run; status lines never land
inside a line of dots; the Markdown summary for CI pages."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import counts

from pytest_evals.session.progress import Progress

SUITE = """
import pytest

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(6), ids=lambda i: f"c{i}")
def test_bench(model, i):
    reply = model.generate(f"q{i}", max_tokens=4)
    assert i not in (3, 4), f"expected 'x', got {reply.text!r}"

def test_plain():
    assert 1 + 1 == PLAIN
"""


@pytest.fixture
def project(fake_project: pytest.Pytester) -> pytest.Pytester:
    fake_project.makepyfile(test_suite=SUITE.replace("PLAIN", "2"))
    return fake_project


def test_a_wrong_answer_is_one_line_and_counted_as_wrong(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=fake:a")
    assert result.ret == 0 and counts(result) == {"passed": 5, "wrong": 2}
    out = result.stdout.str()
    assert "Traceback" not in out and "def test_bench" not in out and "FAILURES" not in out
    result.stdout.fnmatch_lines([
        "test_suite.py ...ww.. *",
        "*= wrong answers (2; scores, not test failures) =*",
        "test_suite.py::test_bench[[]c3-fake:a[]]: expected 'x', got 'a:Q3'",
        "test_suite.py::test_bench[[]c4-fake:a[]]: expected 'x', got 'a:Q4'",
        "*= evals summary =*",
    ])
    # the last lines: the verdicts, the gates, where the run is, then pytest's counts
    lines = out.rstrip().splitlines()
    assert lines[-3].startswith("evals: all 1 gates hold; exit status 0: the 2 wrong answers count in the scores")
    assert lines[-2].startswith("run 1 stored in ")
    assert re.fullmatch(r"=+ 5 passed, 2 wrong in .* =+", lines[-1])
    assert re.match(r"test_suite.py::test_bench +fake:a +pass_rate +6 +0 +66.7%", lines[-4])


def test_a_tb_style_shows_the_tracebacks_and_v_says_wrong(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=fake:a", "--tb=short", "-v")
    result.stdout.fnmatch_lines(["*test_bench[[]c3-fake:a[]] WRONG*",
                                 "*= wrong answers (2; scores, not test failures) =*",
                                 "*_ test_bench[[]c3-fake:a[]] _*",
                                 "test_suite.py:7: in test_bench",
                                 "*AssertionError: expected 'x', got 'a:Q3'"])


def test_plain_tests_keep_pytests_report(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE.replace("PLAIN", "3"))
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == 1 and counts(result) == {"failed": 1, "passed": 4, "wrong": 2}
    result.stdout.fnmatch_lines(["*= FAILURES =*", "*_ test_plain _*", "    def test_plain():",
                                 "FAILED test_suite.py::test_plain - assert (1 + 1) == 3"])
    assert "FAILED test_suite.py::test_bench" not in result.stdout.str()


def test_lf_x_and_junit_keep_their_meaning(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=fake:a", "--junitxml=out.xml")
    cases = {c.get("name"): c for c in ET.parse(project.path / "out.xml").getroot().iter("testcase")}
    failure = cases["test_bench[c3-fake:a]"].find("failure")
    assert failure is not None and "expected 'x', got 'a:Q3'" in failure.get("message", "")
    assert cases["test_bench[c0-fake:a]"].find("failure") is None
    # --lf runs the wrong answers again (the cache plugin saw them fail)
    result = project.runpytest("--model=fake:a", "--lf", "-p", "cacheprovider")
    assert counts(result).get("wrong") == 2 and "passed" not in counts(result)
    # -x stops at the first wrong answer, with pytest's exit status
    result = project.runpytest("--model=fake:a", "-x", "--evals-batch-size=1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED and counts(result) == {"passed": 3, "wrong": 1}


def test_under_xdist_the_controller_counts_wrong_answers(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--model=fake:a", "-n", "2")
    assert result.ret == 0 and counts(result) == {"passed": 5, "wrong": 2}
    result.stdout.fnmatch_lines(["*= wrong answers (2; scores, not test failures) =*"])


def test_markdown_summary_for_ci_pages(project: pytest.Pytester, monkeypatch) -> None:
    step = project.path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = project.runpytest("--model=fake:a", "--evals-markdown=out/summary.md")
    assert result.ret == 0
    text = (project.path / "out" / "summary.md").read_text()
    assert step.read_text() == "earlier step\n" + text  # appended, as GitHub expects
    lines = text.splitlines()
    assert lines[0] == "## pytest-evals run 1: all 1 gates hold"
    assert lines[2] == "6 cases: 4 passed, 2 wrong; exit status 0."
    # the strength column, left-aligned as text: 4 of 6 holds a 50% gate, but its interval spans 50%
    assert "| benchmark | model | metric | n | errors | score | 95% interval | threshold | verdict | strength |" in lines
    assert "|---|---|---|---:|---:|---:|---:|---:|---:|---|" in lines
    assert ("| `test_suite.py::test_bench` | fake:a | pass_rate | 6 | 0 | 66.7% | [30.0%, 90.3%] | >=50% | PASS | "
            "interval spans it: 2 cases short of clearing |" in lines)
    assert "Browse the cases: `pytest-evals cases 1 --outcome wrong,error`" in lines
    result.stdout.fnmatch_lines(["evals-markdown: wrote *summary.md"])

    # a regression against the baseline: the gate fails and the flipped cases are listed
    project.makepyfile(test_suite=SUITE.replace("PLAIN", "2").replace("(3, 4)", "(0, 1, 2, 3, 4, 5)"))
    result = project.runpytest("--model=fake:a", "--evals-markdown=out/summary.md", "--evals-baseline=1")
    assert result.ret == 1
    text = (project.path / "out" / "summary.md").read_text()
    assert text.startswith("## pytest-evals run 2: 1 of 1 gates fail\n")
    assert "| **FAIL** |" in text and "- **FAIL** `test_suite.py::test_bench` [fake:a]: pass_rate 0.0% < 50%" in text
    assert "against run 1: 4 now fail, 0 now pass</summary>" in text
    assert "- now fail: `test_bench[c0-fake:a]`, `test_bench[c1-fake:a]`" in text


def test_a_markdown_path_that_cannot_be_written_is_one_line_at_start_up(project: pytest.Pytester) -> None:
    (project.path / "folder.md").mkdir()
    result = project.runpytest("--model=fake:a", "--evals-markdown=folder.md")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-markdown */folder.md: is a folder; pass a file path such as "
                                 "evals-summary.md"])
    assert not (project.path / ".evals").exists()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_left_waits_for_the_first_windows_and_counts_from_them(pytestconfig) -> None:
    clock = Clock()
    progress = Progress(pytestconfig, clock=clock)
    progress.total, progress.warmup = 100, 10
    progress.started()
    clock.now += 60  # the first window of 10 cases is one batch: they all end after a minute
    progress.finished()
    assert progress.left(clock.now) is None
    assert "time left not known yet" in progress.line(clock.now)  # not "99 x 60 s"
    for _ in range(9):
        progress.finished()
    assert progress.left(clock.now) == pytest.approx(90 * 6.0)
    clock.now += 1
    for _ in range(10):  # the next window's cases end in a burst: no "done in seconds"
        progress.finished()
    assert progress.left(clock.now) == pytest.approx(80 * 61 / 20)
    assert progress.line(clock.now).startswith("evals: 20 of 100 tests done, 0.3/s, about 4m04s left")


def test_a_quiet_stretch_gets_a_line(pytestconfig) -> None:
    clock = Clock()
    progress = Progress(pytestconfig, clock=clock)
    progress.total = 8
    progress.finished()
    clock.now += 45
    assert progress.quiet_line(clock.now) == ("evals: 1 of 8 tests done; no test has ended for 0m45s (a batch across "
                                              "cases, a model load or a slow case is running)")


SLOW_SUITE = """
import time
import pytest

@pytest.mark.parametrize("i", range(40))
def test_slow(model, i):
    model.generate(f"q{i}")
    time.sleep(0.05)
"""


@pytest.mark.parametrize("args", [[], ["-v"], ["-n", "2"]], ids=["dots", "verbose", "xdist"])
def test_status_lines_never_land_inside_a_line_of_results(fake_project: pytest.Pytester, args: list[str]) -> None:
    fake_project.makeconftest(fake_project.path.joinpath("conftest.py").read_text()
                              + "\nfrom pytest_evals.session.progress import Progress\n"
                                "Progress.FIRST_AFTER_S = 0.2\nProgress.EVERY_S = 0.3\n")
    fake_project.makepyfile(test_a=SLOW_SUITE, test_b=SLOW_SUITE)
    result = fake_project.runpytest_subprocess("--model=fake:a", "--evals-batch-size=1", *args)
    assert result.ret == 0
    lines = result.stdout.lines
    status = [i for i, line in enumerate(lines) if "tests done" in line]
    assert status, result.stdout.str()
    for i in status:
        assert lines[i].startswith("evals: "), lines[i]  # never after dots or a test's line
        following = lines[i + 1]
        if not args:  # the next line of dots starts with its file's name again
            assert re.match(r"test_[ab]\.py \.+", following), following
        elif args == ["-v"]:  # (after an empty line: pytest ends the line it thinks open)
            following = lines[i + 2] if not following else following
            assert re.match(r"test_[ab]\.py::test_slow\[\d+-fake:a\] PASSED", following), following
        else:
            assert re.fullmatch(r"\.+( +\[ *\d+%\])?", following) or "tests done" in following, following


@pytest.mark.parametrize("args", [["-n", "1"], ["--evals-batch-size=1"], []], ids=["xdist", "serial", "window"])
def test_a_line_while_no_test_ends(fake_project: pytest.Pytester, args: list[str]) -> None:
    fake_project.makeconftest(fake_project.path.joinpath("conftest.py").read_text()
                              + "\nfrom pytest_evals.session.progress import Progress\n"
                                "Progress.FIRST_AFTER_S = 0.0\nProgress.EVERY_S = 0.5\nProgress.QUIET_S = 0.5\n")
    fake_project.makepyfile(test_quiet="""
        import pathlib
        import time
        import pytest

        @pytest.mark.parametrize("i", range(2))
        def test_waits(model, i):
            model.generate(f"q{i}")
            print("the test's own output")
            if i == 1:  # waits until the status line about the silence is out (the runner ends it)
                marker, deadline = pathlib.Path("said.txt"), time.monotonic() + 60
                while not marker.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        """)
    # under xdist the controller writes it while the case runs; without xdist it is written during the
    # test's call, which pytest captures: it goes to the terminal's own stream, not into the test's output
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:a", "-rP",
                             *args], cwd=fake_project.path, stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if "no test has ended for" in line:
            (fake_project.path / "said.txt").write_text("")
    assert proc.wait(timeout=120) == 0
    quiet = [line for line in seen if "no test has ended for" in line]
    assert quiet and quiet[0].startswith("evals: 1 of 2 tests done; no test has ended for 0m0"), "".join(seen)
    assert not any("no test has ended" in line and not line.startswith("evals: ") for line in seen)
    # -rP shows each passed test's captured output: the test's own, never the status line
    captured = "".join(seen).split("PASSES", 1)[1]
    assert captured.count("the test's own output") == 2 and "no test has ended" not in captured


@pytest.mark.parametrize("args", [[], ["-v"]], ids=["dots", "verbose"])
def test_a_long_model_load_says_so_as_it_starts(fake_project: pytest.Pytester, args: list[str]) -> None:
    """The load happens in the first case's setup, which pytest captures: the line goes to the terminal
    before the load (a marker file shows the order), whole, and is not in the case's captured output."""
    fake_project.makeconftest(fake_project.path.joinpath("conftest.py").read_text() + '''
import pathlib

def _note(cls, spec):
    pathlib.Path("noted.txt").write_text("")
    return f"evals: loading {spec.raw} (slowly)"

def _init(self, spec, settings):
    assert pathlib.Path("noted.txt").exists()  # said before the load began
    Backend.__init__(self, spec, settings)

FakeBackend.load_note = classmethod(_note)
FakeBackend.__init__ = _init
''')
    fake_project.makepyfile(test_loaded="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_loaded(model, i):
            print("the test's own output")
            assert model.generate(f"q{i}").text
        """)
    result = fake_project.runpytest_subprocess("--model=fake:a", "-rP", *args)
    assert result.ret == 0, result.stdout.str()
    lines = result.stdout.lines
    said = [i for i, line in enumerate(lines) if "(slowly)" in line]
    assert len(said) == 1 and lines[said[0]] == "evals: loading fake:a (slowly)", lines
    following = next(line for line in lines[said[0] + 1:] if line)  # (pytest's blank line before its first)
    assert re.match(r"test_loaded\.py[: ]", following), following  # pytest goes on with the file (or test) name
    assert "(slowly)" not in result.stdout.str().split("PASSES", 1)[1]

"""Bad input found by trying the product: each is one line that names the problem and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import rows

GATED = """
import pytest

@pytest.mark.{marker}(0.5)
@pytest.mark.parametrize("i", range(4))
def test_bench(model, i):
    assert i != 0
"""


def test_a_misspelt_marker_is_a_usage_error_naming_the_real_one(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_gate=GATED.format(marker="evals_treshold"))
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_gate.py::test_bench: unknown marker @pytest.mark.evals_treshold; "
                                 "did you mean @pytest.mark.evals_threshold?"])
    # with the right name the gate applies (75% >= 50%), where the misspelling fell back to 100%
    fake_project.makepyfile(test_gate=GATED.format(marker="evals_threshold"))
    assert fake_project.runpytest("--model=fake:a").ret == 0


def test_a_misspelt_marker_under_xdist_fails_its_cases_with_the_line(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_gate=GATED.format(marker="evals_treshold"), test_plain="""
        import pytest

        @pytest.mark.evals_retyr(attempts=2)
        def test_unit():
            pass
    """)
    result = fake_project.runpytest("--model=fake:a", "-n", "2")
    assert result.ret != 0
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(["*unknown marker @pytest.mark.evals_retyr; did you mean @pytest.mark.evals_retry?*"])


def test_a_threshold_on_a_missing_metric_fails_only_its_own_row(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_gate="""
        import pytest

        @pytest.mark.evals_threshold(0.5, rouge=0.3)
        @pytest.mark.parametrize("i", range(4))
        def test_bench(model, evals_score, i):
            evals_score(f1=0.5)
        """)
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([
        "test_gate.py::test_bench*pass_rate*4*0*100.0%*>=50%*PASS",
        "*f1*4*0.5*-",  # reported, no minimum: no verdict of its own
        "*rouge*-*>=0.3*FAIL",
        "FAIL test_gate.py::test_bench [[]fake:a[]]: threshold on metric 'rouge' (marker), but no case recorded it*",
    ])
    assert rows(fake_project, "SELECT metric, verdict FROM benchmarks ORDER BY metric") == [
        ("f1", None), ("pass_rate", "pass"), ("rouge", "fail")]


def test_a_database_where_files_cannot_be_created_says_why(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_x="def test_x(model):\n    pass\n")
    result = fake_project.runpytest("--model=fake:a", "--evals-db=/proc/x.sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: /proc/x.sqlite: cannot create the database: /proc does not take new files "
                                 "(a virtual file system such as /proc or /sys); pass a writable --evals-db PATH"])
    (fake_project.path / "afile").write_text("")
    result = fake_project.runpytest("--model=fake:a", "--evals-db=afile/x.sqlite")
    result.stderr.fnmatch_lines(["ERROR: */afile/x.sqlite: cannot create the database: */afile is a file, not a "
                                 "folder; pass a writable --evals-db PATH"])


def _cli(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_the_command_takes_db_after_the_subcommand_and_names_it(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_x="def test_x(model):\n    pass\n")
    assert fake_project.runpytest("--model=fake:a", "--evals-db=other.sqlite").ret == 0
    for args in (["--db", "other.sqlite", "runs"], ["runs", "--db", "other.sqlite"]):
        out = _cli(fake_project.path, *args)
        assert out.returncode == 0 and out.stdout.splitlines()[2].startswith("1 "), out
    (fake_project.path / "broken.sqlite").write_text("not a database")
    out = _cli(fake_project.path, "show", "latest", "--db", "broken.sqlite")
    assert out.returncode == 2
    assert out.stderr.strip().endswith("move it aside or pass another --db PATH"), out.stderr
    assert "--evals-db" not in out.stderr


def test_a_report_into_a_missing_folder_is_one_line(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_x="def test_x(model):\n    pass\n")
    assert fake_project.runpytest("--model=fake:a").ret == 0
    out = _cli(fake_project.path, "report", "latest", "--html", "no/such/folder/run.html")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("pytest-evals: no/such/folder/run.html: cannot write the report (No such file or "
                                  "directory); create its folder or pass another --html FILE")

"""Bad input found by trying the product: each is one line that names the problem and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import counts, rows

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
        "test_gate.py::test_bench*pass_rate*4*0*100.0%*>=50%*PASS*interval clears it by 1 case",
        "*f1*4*0.5*-",  # reported, no minimum: no verdict of its own
        "*rouge*-*>=0.3*FAIL  no case recorded it",
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


# --- issue 29, item 4: mistakes a new user made, each answered in one line ------------------------------
@pytest.mark.parametrize("content, line", [
    ('id,question,answer\na,q1,1\nb,q2\nc,q3,3\n',
     "bad.csv:3: 2 fields where the header has 3 (id, question, answer); give the row every field"),
    ('id,question,answer\na,q1,1\nb,q2,2,extra\n',
     "bad.csv:3: 4 fields where the header has 3 (id, question, answer); quote a field that holds a comma"),
    ('id,question,answer\na,"What is 2+2,4\nb,What is 3+3,6\nc,What is 1+1,2\n',
     "bad.csv:2: not valid CSV (unexpected end of data); check the quotes of the row that starts there"),
    ('id,question,answer\na,"What is 2+2,4\nb,What is "3+3",6\nc,q,2\n',
     "bad.csv:2: not valid CSV (',' expected after '\"')"),
], ids=["missing-field", "extra-field", "unclosed-quote", "quote-closed-later"])
def test_a_malformed_csv_row_is_a_collection_error_naming_its_line(fake_project: pytest.Pytester, content: str,
                                                                  line: str) -> None:
    (fake_project.path / "bad.csv").write_text(content)
    fake_project.makepyfile(test_data="""
        import pytest
        from pytest_evals import load_dataset

        CASES = load_dataset(__file__, "bad.csv")

        @pytest.mark.parametrize("case", CASES)
        def test_case(model, case):
            assert model.generate(case["question"]).text == case["answer"]
    """)
    result = fake_project.runpytest_subprocess("--model=fake:a")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # pytest's exit status for collection errors
    out = result.stdout.str()
    assert f"{fake_project.path / line}" in out, out
    assert "Traceback" not in out and "load_dataset" not in out.split("ERROR collecting", 1)[1].split("short test")[0]
    assert not (fake_project.path / ".evals").exists()  # nothing ran: no run is stored


def test_a_bad_jsonl_line_or_a_missing_file_is_one_line(fake_project: pytest.Pytester) -> None:
    (fake_project.path / "cases.jsonl").write_text('{"q": "a"}\n{oops\n')
    fake_project.makepyfile(test_data="""
        from pytest_evals import load_jsonl, load_dataset

        CASES = load_jsonl(__file__, "cases.jsonl")
        MORE = load_dataset(__file__, "missing.jsonl")

        def test_case():
            pass
    """)
    result = fake_project.runpytest_subprocess("--model=fake:a")
    section = result.stdout.str().split("ERROR collecting test_data.py", 1)[1].split("short test summary")[0]
    assert [line for line in section.splitlines()[1:] if line.strip() and not line.startswith("=")] == [
        f"{fake_project.path / 'cases.jsonl'}:2: not valid JSON (Expecting property name enclosed in double quotes)"]
    # with an explicit --tb the traceback stays
    assert "load_jsonl" in fake_project.runpytest_subprocess("--model=fake:a", "--tb=long").stdout.str()


@pytest.mark.parametrize("marker", ["evals_treshold(0.5)", "evals_threshold(1.5)", "evals_threshold(50)",
                                    "evals_retry(attemps=3)"])
def test_a_marker_mistake_records_no_run_and_gives_no_resume_advice(fake_project: pytest.Pytester,
                                                                   marker: str) -> None:
    fake_project.makepyfile(test_gate=f"""
        import pytest

        @pytest.mark.{marker}
        @pytest.mark.parametrize("i", range(3))
        def test_bench(model, i):
            assert model.generate(str(i)).text
    """)
    result = fake_project.runpytest_subprocess("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: test_gate.py::test_bench: " in result.stderr.str()
    assert "--evals-resume" not in result.stdout.str() + result.stderr.str()
    assert "is incomplete" not in result.stdout.str() + result.stderr.str()
    assert not (fake_project.path / ".evals" / "evals.sqlite").exists()


def test_api_misuse_in_a_test_body_is_an_error_of_that_case_in_one_line(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_misuse="""
        import pytest

        def add_numbers(a: int, b: int) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("i", range(4))
        def test_case(model, i):
            if i == 0:
                model.generate(["two", "prompts"])
            if i == 1:
                model.chat("add 1 and 2", tool_choice="add_numbers")
            if i == 2:
                model.chat({"role": "user", "content": "a dict, not a list"})
            assert model.generate(f"q{i}").text
    """)
    result = fake_project.runpytest_subprocess("--model=fake:a", "--evals-max-error-rate=1")
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and result.ret == pytest.ExitCode.OK, out[-3000:]
    assert counts(result) == {"passed": 1, "errors": 3}
    result.stdout.fnmatch_lines([
        "E *TypeError: model.generate(prompt): expected a string, got list *; to ask several "
        "prompts, call model.generate once for each*",
        "E *ValueError: tool_choice='add_numbers': expected 'auto', 'none', 'required' or a tool's name "
        "(no tools given)",
        "E *TypeError: model.chat(messages): expected a string or a list of messages such as*got dict*"])
    assert "pytest_evals" not in out.split("short test summary")[0]  # no frame of the plugin's


def test_a_markdown_path_that_cannot_be_written_is_a_usage_error_at_start_up(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_a="def test_a(model):\n    assert model.generate('x').text\n")
    (fake_project.path / "afile").write_text("")
    for path, why in (("/proc/sum.md", "/proc does not take new files (a virtual file system such as /proc or /sys)"),
                      ("afile/sum.md", "is a file, not a folder")):
        result = fake_project.runpytest_subprocess("--model=fake:a", f"--evals-markdown={path}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: --evals-markdown *sum.md: cannot write the Markdown summary: *{why}; "
                                     "pass another --evals-markdown PATH"])
        assert "passed" not in result.stdout.str()
    # missing folders are created, as --junitxml does
    assert fake_project.runpytest_subprocess("--model=fake:a", "--evals-markdown=new/dir/sum.md").ret == 0
    assert (fake_project.path / "new" / "dir" / "sum.md").exists()


def test_a_route_or_judge_that_cannot_serve_names_its_own_option(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_a="def test_a(model):\n    assert model.generate('x').text\n")
    result = fake_project.runpytest_subprocess("--model=fake:a", "--evals-route", "loglikelihood=fake:missing")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-route loglikelihood=fake:missing: fake model is missing; pick another"])
    result = fake_project.runpytest_subprocess("--model=fake:a", "--evals-judge", "fake:missing")
    result.stderr.fnmatch_lines(["ERROR: --evals-judge fake:missing: fake model is missing; pick another"])


def test_greedy_calls_of_a_repeated_suite_are_one_line_each(fake_project: pytest.Pytester) -> None:
    """A test whose own marker asks for samples but whose calls are greedy: one line per case (under
    --evals-repeat such a test runs once instead: tests/test_repeats.py)."""
    fake_project.makepyfile(test_a="""
        import pytest

        @pytest.mark.evals_repeat(3)
        @pytest.mark.parametrize("i", range(4))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
    """)
    result = fake_project.runpytest_subprocess("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stdout.str().split("= ERRORS =", 1)[1].split("short test summary")[0]
    lines = [line for line in errors.splitlines()[1:] if line.strip() and not line.startswith("=")]
    assert len(lines) == 2 * 12  # each case: its header and its one line
    assert all(line.startswith("___") or line.startswith("model.generate() asks for temperature 0") for line in lines)

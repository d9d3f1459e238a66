"""`pytest-evals cases` and `pytest-evals export`, on runs stored by real pytest sessions."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from conftest import rows

SUITE = '''
import pytest

@pytest.mark.parametrize("i", range(4), ids=lambda i: f"c{i}")
def test_bench(model, evals_score, i):
    reply = model.generate(f"question {i}")
    evals_score(f1=0.25 * i)
    assert i != 3 or reply.text.startswith("b:"), "wrong <answer>"


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def test_tools(model):
    conversation = model.conversation(system="be brief", tools=[add])
    assert conversation.say('call add {"a": 2, "b": 3}').text == "the answer is 5"
    conversation.say("call nope {}")
    assert conversation.say("hello").text == "olleh"
'''


@pytest.fixture
def run(fake_project: pytest.Pytester) -> pytest.Pytester:
    """One run of two models: fake:a has a price, fake:b has none; fake:a fails c3."""
    fake_project.makeini("[pytest]\nevals_prices =\n    fake:a 1000 2000\n")
    fake_project.makepyfile(test_suite=SUITE)
    fake_project.runpytest("--model", "fake:a", "--model", "fake:b")
    return fake_project


def cli(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], cwd=pytester.path,
                          capture_output=True, text=True, timeout=60)


def shown(out: subprocess.CompletedProcess) -> list[str]:
    """The nodeids of the case blocks `cases` printed (each block starts at an unindented line)."""
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines()[:-1] if line and not line.startswith(" ")]


def test_cases_filters_by_outcome_keyword_model_and_benchmark(run: pytest.Pytester) -> None:
    out = cli(run, "cases", "latest", "--outcome", "failed")
    assert shown(out) == ["test_suite.py::test_bench[c3-fake:a]"]
    block = out.stdout
    assert "  model fake:a, wrong in " in block  # labelled as the terminal labels it (stored as failed)
    assert cli(run, "cases", "latest", "--outcome", "wrong").stdout == out.stdout  # either name filters
    assert "  scores: f1=0.75" in block
    assert "  input:\n    question 3\n  output:\n    a:QUESTION 3\n  error:\n    AssertionError: wrong <answer>" in block
    # fake:a is priced at $1000/$2000 per million tokens: 10 prompt and 3 completion tokens
    assert "  1 model call, 10 prompt + 3 completion tokens, latency " in block and "cost $0.0160" in block
    assert out.stdout.splitlines()[-1] == "1 of 10 cases of run 1 shown"

    both = cli(run, "cases", "1", "--outcome", "failed,passed", "--outcome", "error", "--model", "fake:b")
    assert shown(both) == [f"test_suite.py::test_bench[c{i}-fake:b]" for i in range(4)] + [
        "test_suite.py::test_tools[fake:b]"]
    assert "cost unknown" in both.stdout  # fake:b has no price: unknown, never $0
    assert both.stdout.splitlines()[-1] == "5 of 10 cases of run 1 shown"

    keyword = cli(run, "cases", "latest", "-k", "(c1 or c2) and not FAKE:B")
    assert shown(keyword) == ["test_suite.py::test_bench[c1-fake:a]", "test_suite.py::test_bench[c2-fake:a]"]

    bench = cli(run, "cases", "latest", "--benchmark", "test_tools", "--model", "fake:a", "--model", "fake:b")
    assert shown(bench) == ["test_suite.py::test_tools[fake:a]", "test_suite.py::test_tools[fake:b]"]
    assert shown(cli(run, "cases", "latest", "--benchmark", "test_suite.py::test_tools")) == shown(bench)

    none = cli(run, "cases", "latest", "--outcome", "skipped")
    assert none.returncode == 0
    assert none.stdout.strip() == ("no cases match in run 1 (0 of 10 cases shown; its cases: 9 passed, 1 wrong; "
                                   "its models: fake:a, fake:b)")


def test_cases_shows_the_conversation_with_tool_calls(run: pytest.Pytester) -> None:
    out = cli(run, "cases", "latest", "-k", "test_tools and fake:b")
    assert shown(out) == ["test_suite.py::test_tools[fake:b]"]
    lines = out.stdout.splitlines()
    start = lines.index("  conversation 1:")
    transcript = lines[start:lines.index("", start)]
    assert transcript[:3] == ["  conversation 1:", "    system: be brief", '    user: call add {"a": 2, "b": 3}']
    assert transcript[3] == "    assistant: (calls tools)"
    assert transcript[4].startswith('      -> add({"a": 2, "b": 3}) returned 5 (') and transcript[4].endswith(" ms)")
    assert transcript[5:8] == ["    assistant: the answer is 5", "    user: call nope {}", "    assistant: (calls tools)"]
    assert transcript[8].startswith("      -> nope({}) failed: there is no tool named 'nope'; the tools are add (")
    assert transcript[9:] == ["    assistant: the answer is error: there is no tool named 'nope'; the tools are add",
                              "    user: hello", "    assistant: olleh"]
    # the tool messages are shown once, as the results under the calls; the calls in the conversation
    # are the transcript, not repeated as input and output
    assert "    tool" not in out.stdout and "  input:" not in out.stdout
    # five chat calls, no tokens counted for the tool-asking replies: their totals are unknown
    assert "  5 model calls, ? prompt + ? completion tokens" in out.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_rows_carry_the_calls_totals(run: pytest.Pytester, fmt: str) -> None:
    out = cli(run, "export", "latest", "--format", fmt)
    assert out.returncode == 0, out.stderr
    if fmt == "jsonl":
        exported = [json.loads(line) for line in out.stdout.splitlines()]
    else:
        exported = list(csv.DictReader(io.StringIO(out.stdout, newline="")))

    def value(v):  # CSV cells are text, empty for null
        if fmt == "jsonl" or v is None:
            return v
        return None if v == "" else float(v)

    stored = {nodeid: case for nodeid, *case in rows(run, "SELECT c.nodeid, c.outcome, c.input_text, c.error, "
                                                     "count(k.id), sum(k.input_tokens), sum(k.output_tokens), "
                                                     "sum(k.latency_s), sum(k.cost_usd), count(k.cost_usd) "
                                                     "FROM cases c LEFT JOIN calls k ON k.case_id = c.id "
                                                     "WHERE c.run_id = 1 GROUP BY c.id")}
    assert [r["nodeid"] for r in exported] == list(stored) and len(exported) == 10
    assert "sample" not in exported[0]  # no repeated cases in this run
    for row in exported:
        outcome, input_text, error, calls, prompt, completion, latency, cost, priced = stored[row["nodeid"]]
        assert (row["outcome"], row["input"] or None, row["error"] or None) == (outcome, input_text, error)
        assert value(row["calls"]) == calls
        assert value(row["latency_s"]) == pytest.approx(latency)
        if "test_bench" in row["nodeid"]:
            assert (value(row["prompt_tokens"]), value(row["completion_tokens"])) == (prompt, completion)
            assert value(row["score.f1"]) == pytest.approx(0.25 * int(row["nodeid"].split("[c")[1][0]))
        else:
            assert row["prompt_tokens"] in (None, "") and row["score.f1"] in (None, "")
        if priced == calls:  # every call has a cost: the sum
            assert value(row["cost_usd"]) == pytest.approx(cost) and cost > 0
        else:  # any call without one (no price, or no tokens to price): unknown, not 0
            assert row["cost_usd"] in (None, "")
    assert sum(case[-1] == case[3] for case in stored.values()) == 4  # every cost known: fake:a's bench


def test_export_counts_calls_the_call_cache_answered_as_free(fake_project: pytest.Pytester) -> None:
    fake_project.makeini("[pytest]\nevals_prices =\n    fake:a 1000 2000\n")
    fake_project.makepyfile(test_suite=SUITE)
    for _ in range(2):
        fake_project.runpytest("--model=fake:a", "--evals-cache=use", "-k", "test_bench")
    assert rows(fake_project, "SELECT run_id, count(*), sum(cached) FROM calls GROUP BY run_id") == [(1, 4, None),
                                                                                                    (2, 4, 4)]
    exported = {}
    for run_id in ("1", "2"):
        out = cli(fake_project, "export", run_id, "--format", "jsonl", "-k", "c0")
        assert out.returncode == 0, out.stderr
        (exported[run_id],) = [json.loads(line) for line in out.stdout.splitlines()]
    totals = ["calls", "prompt_tokens", "completion_tokens", "cost_usd"]
    assert [exported["1"][t] for t in totals] == [1, 10, 3, pytest.approx(0.016)]
    # answered from the cache: no tokens processed in this run and $0, which are known figures
    assert [exported["2"][t] for t in totals] == [1, 0, 0, 0.0]


def test_export_to_a_file_with_a_filter(run: pytest.Pytester) -> None:
    out = cli(run, "export", "latest", "-o", "failed.csv", "--outcome", "failed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "wrote 1 cases of run 1 to failed.csv (csv)"
    with open(run.path / "failed.csv", newline="", encoding="utf-8") as handle:
        (row,) = csv.DictReader(handle)
    assert row["nodeid"] == "test_suite.py::test_bench[c3-fake:a]" and row["output"] == "a:QUESTION 3"


@pytest.mark.parametrize("args, message", [
    (["cases", "latest", "-k", "c1 and ("], "pytest-evals: -k 'c1 and (': at column 9: expected not OR left "
     "parenthesis OR identifier; got end of input; write an expression as for pytest -k, "
     "e.g. 'c1 or (bench and not slow)'"),
    (["cases", "latest", "-k", "c1(x=1)"], "pytest-evals: -k 'c1(x=1)': names take no arguments here; "
     "write plain names, e.g. 'c1 or bench'"),
    (["cases", "latest", "--outcome", "passed,xfail"], "pytest-evals: --outcome xfail: not an outcome; pick from "
     "passed, wrong, error, skipped (repeat --outcome or separate them with commas)"),
    (["export", "latest", "--format", "xml"], "pytest-evals: --format xml: not an export format; "
     "pass --format jsonl or --format csv"),
    (["export", "latest"], "pytest-evals: export needs a format: pass --format jsonl or --format csv"),
    (["export", "latest", "--format", "csv", "-o", "no/such/dir/x.csv"], "pytest-evals: no/such/dir/x.csv: "
     "cannot write the export (No such file or directory); create its folder or pass another -o FILE"),
])
def test_bad_input_is_one_line(run: pytest.Pytester, args: list[str], message: str) -> None:
    out = cli(run, *args)
    assert out.returncode == 2 and out.stderr.strip() == message and out.stdout == ""

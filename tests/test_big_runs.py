"""Runs too big to hold at once: the HTML report split into a summary and pages of cases, `cases` and
`export` read case by case, and the cursors they read through (on a real SQLite store)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_evals.report.browse import case_filter, export_text, show_cases
from pytest_evals.report.html.cases import own_inputs
from pytest_evals.report.html.pages import write_report
from pytest_evals.session.recorder import benchmark_of
from pytest_evals.store.copies import Copy, copy_cases
from pytest_evals.store.database import Store
from pytest_evals.store.reads import finished_index, iter_cases, resumed_chain
from pytest_evals.store.rows import CallRow, CaseRecord, CaseRow, TurnRow

PROMPT = "Answer with a number.\n\nQ: 1 + 1?\nA: 2\n\nQ: what is {i} + {i}?"


def _record(benchmark: str, i: int, outcome: str, calls: int = 1, turns: int = 0) -> CaseRecord:
    nodeid = f"test_{benchmark}.py::test_{benchmark}[c{i}-fake:a]"
    case = CaseRow(nodeid=nodeid, benchmark=f"test_{benchmark}.py::test_{benchmark}", model="fake:a",
                   outcome=outcome, duration_s=0.01, input_text=PROMPT.format(i=i), output_text=str(2 * i),
                   error="wrong" if outcome == "failed" else None, scores={"f1": i / 10},
                   case_key=f"v1:{benchmark}{i}")
    return CaseRecord(case, [CallRow(kind="generate", model="fake:a", input_text=f"q{i}.{k}", output_text="a",
                                     input_tokens=3, output_tokens=1, latency_s=0.01 * (k + 1))
                             for k in range(calls)],
                      [TurnRow(conversation=1, position=p, role="user" if p % 2 == 0 else "assistant",
                               content=f"turn {p} of c{i}") for p in range(turns)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A run of 7 cases of `alpha` (c3 and c5 wrong) and 4 of `beta`, some with no calls, some with several
    and a conversation, and a second run stored in between, so that rows of two runs interleave."""
    store = Store(tmp_path / "evals.sqlite")
    run = store.start_run(args=[], rootdir=str(tmp_path), git_revision=None, models=["fake:a"], hostname="h",
                          plugin_version="0")
    other = store.start_run(args=[], rootdir=str(tmp_path), git_revision=None, models=["fake:a"], hostname="h",
                            plugin_version="0")
    for i in range(7):
        store.record_case(run, _record("alpha", i, "failed" if i in (3, 5) else "passed", calls=i % 3,
                                       turns=2 if i == 4 else 0))
        store.record_case(other, _record("gamma", i, "passed"))
        if i < 4:
            store.record_case(run, _record("beta", i, "error" if i == 2 else "passed"))
    yield store
    store.close()


def test_iter_cases_gives_each_case_its_own_rows_in_order(store: Store) -> None:
    seen = list(iter_cases(store, 1, ("calls", "turns")))
    assert [c["nodeid"] for c, _ in seen] == [c["nodeid"] for c in store.cases(1)]
    calls, turns = store.rows("calls", 1), store.rows("turns", 1)
    for case, rows in seen:
        assert rows["calls"] == [c for c in calls if c["case_id"] == case["id"]]
        assert rows["turns"] == [t for t in turns if t["case_id"] == case["id"]]
    assert sum(len(rows["calls"]) for _, rows in seen) == len(calls) > 0
    with pytest.raises(ValueError, match="'cases' is not one of calls, turns, tool_calls"):
        next(iter_cases(store, 1, ("cases",)))


def test_finished_index_holds_what_a_replay_needs(store: Store) -> None:
    index = finished_index(store, 1)
    assert len(index) == 10  # 11 cases, the errored one is not finished
    case_id, nodeid, outcome, error, duration, scores, run = index["v1:alpha3"]
    assert (nodeid, outcome, error, duration, json.loads(scores), run) == (
        "test_alpha.py::test_alpha[c3-fake:a]", "failed", "wrong", 0.01, {"f1": 0.3}, 1)
    assert store.cases(1)[[c["id"] for c in store.cases(1)].index(case_id)]["case_key"] == "v1:alpha3"


def _columns(store: Store, table: str, run_id: int, skip: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in skip} for row in store.rows(table, run_id)] \
        if table != "cases" else [{k: v for k, v in row.items() if k not in skip} for row in store.cases(run_id)]


def test_copy_cases_copies_cases_with_their_rows_inside_sqlite(store: Store) -> None:
    index = finished_index(store, 1)
    wanted = ["v1:alpha4", "v1:alpha3", "v1:alpha1"]  # 2 turns; wrong; one call
    new = store.start_run(args=[], rootdir="/", git_revision=None, models=["fake:a"], hostname="h",
                          plugin_version="0", resumed_run=1)
    copies = [Copy(index[k][0], index[k][1], benchmark_of(index[k][1]), "alias", "gw1") for k in wanted]
    made = copy_cases(store, new, [*copies, Copy(10_000, "gone", "gone", "alias", None)])
    assert made[3] is None and all(made[:3]) and len(set(made[:3])) == 3
    copied = store.cases(new)
    assert [c["case_key"] for c in copied] == wanted
    assert {(c["model"], c["worker"], c["resumed_from"], c["run_id"]) for c in copied} == {("alias", "gw1", 1, new)}
    skip = ("id", "run_id", "case_id", "model", "worker", "resumed_from")
    originals = {c["case_key"]: c for c in _columns(store, "cases", 1, ("run_id", "model", "worker", "resumed_from"))}
    for case in _columns(store, "cases", new, ("run_id", "model", "worker", "resumed_from")):
        original = originals[case["case_key"]]
        assert case.pop("id") != original.pop("id") and case == original  # everything else as stored
    for table in ("calls", "turns"):
        mine = _columns(store, table, new, skip)
        theirs = [r for r, full in zip(_columns(store, table, 1, skip), store.rows(table, 1))
                  if full["case_id"] in {index[k][0] for k in wanted}]
        assert sorted(map(repr, mine)) == sorted(map(repr, theirs)) and mine  # (alpha4: 2 turns)
    # copied again (a case reported twice), in a later batch or twice in one: replaced, not doubled
    again = copy_cases(store, new, copies[:1])
    assert len(store.cases(new)) == 3 and again[0] not in made
    twice = copy_cases(store, new, [copies[1], copies[1]])
    assert len(store.cases(new)) == 3 and [c["id"] for c in store.cases(new)][-1] == twice[1]
    assert len(store.rows("calls", new)) == sum(len(rows["calls"]) for _, rows in iter_cases(store, new, ("calls",)))
    # a copy of a copy names the run where the case ran
    later = store.start_run(args=[], rootdir="/", git_revision=None, models=["fake:a"], hostname="h",
                            plugin_version="0", resumed_run=new)
    copy_cases(store, later, [Copy(again[0], copies[0].nodeid, copies[0].benchmark, "a", None)])
    assert store.cases(later)[0]["resumed_from"] == 1


def test_the_next_resume_takes_what_a_killed_resume_did_not_copy(store: Store) -> None:
    """Run 3 resumed run 1 and was killed having copied two cases and run one again (an error now): run
    3's index has its own finished cases, and run 1's that run 3 holds nothing of; once run 3 finished,
    only its own."""
    index = finished_index(store, 1)
    killed = store.start_run(args=[], rootdir="/", git_revision=None, models=["fake:a"], hostname="h",
                             plugin_version="0", resumed_run=1)
    copy_cases(store, killed, [Copy(index[k][0], index[k][1], benchmark_of(index[k][1]), "fake:a", None)
                               for k in ("v1:alpha0", "v1:alpha3")])
    store.record_case(killed, _record("alpha", 6, "error"))
    assert resumed_chain(store, killed) == [killed, 1]
    chained = finished_index(store, killed)
    assert set(chained) == set(index) - {"v1:alpha6"}
    assert chained["v1:alpha0"][0] in {c["id"] for c in store.cases(killed)}  # its copy, which ran in run 1
    assert chained["v1:alpha0"][6] == chained["v1:alpha1"][6] == 1
    store.finish_run(killed, exit_status=0, status="interrupted")
    assert set(finished_index(store, killed)) == set(chained)
    store.finish_run(killed, exit_status=0, status="finished")
    assert resumed_chain(store, killed) == [killed] and set(finished_index(store, killed)) == {"v1:alpha0", "v1:alpha3"}
    store.delete_runs([1])  # a run deleted: the chain ends where it is gone
    store.finish_run(killed, exit_status=0, status="interrupted")
    assert resumed_chain(store, killed) == [killed]


def test_cases_and_export_read_case_by_case_as_before(store: Store) -> None:
    lines = list(show_cases(store, 1, case_filter(["wrong"])))
    assert [line for line in lines if line and not line.startswith(" ")] == [
        "test_alpha.py::test_alpha[c3-fake:a]", "test_alpha.py::test_alpha[c5-fake:a]",
        "2 of 11 cases of run 1 shown"]
    assert list(show_cases(store, 1, case_filter(keyword="nothing"))) == [
        "no cases match in run 1 (0 of 11 cases shown; its cases: 8 passed, 2 wrong, 1 error; its models: fake:a)"]
    text, count = export_text(store, 1, case_filter(keyword="alpha"), "jsonl")
    exported = [json.loads(line) for line in text.splitlines()]
    assert count == len(exported) == 7
    assert [row["calls"] for row in exported] == [i % 3 for i in range(7)]
    assert [row["latency_s"] for row in exported] == pytest.approx([0, 0.01, 0.03, 0, 0.01, 0.03, 0])
    assert exported[4]["score.f1"] == 0.4 and exported[4]["nodeid"] == "test_alpha.py::test_alpha[c4-fake:a]"
    text, count = export_text(store, 1, case_filter(), "csv")
    assert count == 11 and text.splitlines()[0].endswith("cost_usd,score.f1")


def test_a_big_run_is_a_summary_and_pages_of_cases(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    written = write_report(store, 1, path, per_page=3)
    folder = tmp_path / "report"
    assert written[0] == path and all(p.parent == folder for p in written[1:])
    # alpha: 7 cases on 3 pages, 2 not passed on 1; beta: 4 on 2, 1 not passed on 1
    assert sorted(p.name for p in written[1:]) == sorted(
        ["b0-all-1.html", "b0-all-2.html", "b0-all-3.html", "b0-open-1.html",
         "b1-all-1.html", "b1-all-2.html", "b1-open-1.html"])
    summary = path.read_text()
    links = re.findall(r'href="([^"]+)"', summary)
    assert sorted(links) == sorted(f"report/{p.name}" for p in written[1:])
    assert "Cases (11: 8 passed, 2 wrong, 1 error)" in summary and "<tbody class=\"case" not in summary

    def nodeids(name: str) -> list[str]:
        return re.findall(r'<td class="name" title="(test_[^"]+\])"', (folder / name).read_text())

    every = [n for name in ("b0-all-1.html", "b0-all-2.html", "b0-all-3.html", "b1-all-1.html", "b1-all-2.html")
             for n in nodeids(name)]
    assert sorted(every) == sorted(c["nodeid"] for c in store.cases(1))  # each case once
    assert nodeids("b0-open-1.html") == ["test_alpha.py::test_alpha[c3-fake:a]", "test_alpha.py::test_alpha[c5-fake:a]"]
    middle = (folder / "b0-all-2.html").read_text()
    assert '<a href="../report.html">summary</a>' in middle
    assert '<a href="b0-all-1.html">previous</a>' in middle and '<a href="b0-all-3.html">next</a>' in middle
    assert "conversation: 2 messages" in middle  # c4's turns are on its page
    # the input column shows each case's own question, as the one-page report does (shared over the
    # whole benchmark, not just the page)
    assert "what is 4 + 4?" in middle and "Answer with a number" not in middle.split("<details>")[0]


def test_a_report_written_again_leaves_no_page_of_the_earlier_one(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_report(store, 1, path, per_page=2)
    assert (tmp_path / "report" / "b0-all-4.html").exists()
    written = write_report(store, 1, path, per_page=3)
    assert sorted((tmp_path / "report").iterdir()) == sorted(written[1:])


def test_a_run_that_fits_one_page_stays_one_self_contained_page(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    assert write_report(store, 1, path) == [path]
    assert not (tmp_path / "report").exists()
    assert path.read_text().count('<tbody class="case') == 11


def test_own_inputs_of_a_page_use_what_the_whole_benchmark_shares() -> None:
    page = [{"id": 1, "benchmark": "b", "input_text": "x\n\nshared\nQ: one"}]
    assert own_inputs(page) == {1: "shared\nQ: one"}  # alone: its last paragraph
    assert own_inputs(page, {"b": "x\n\nshared\nQ: "}) == {1: "Q: one"}  # one of several: without what they share

"""The SQLite store: migrations, WAL, one transaction per case."""

import sqlite3

import pytest

from pytest_evals.store.database import Store, StoreError
from pytest_evals.store.migrations import MIGRATIONS
from pytest_evals.store.rows import CallRow, CaseRecord, CaseRow, ToolCallRow, TurnRow


def make_run(store: Store) -> int:
    return store.start_run(args=["-q"], rootdir="/r", git_revision=None, models=["smollm2"],
                           hostname="h", plugin_version="0")


def test_schema_migrations_and_wal(tmp_path) -> None:
    store = Store(tmp_path / "a" / "evals.sqlite")
    assert store.schema_version == len(MIGRATIONS)
    assert {"runs", "cases", "calls"} <= set(store.db.table_names())
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    again = Store(tmp_path / "a" / "evals.sqlite")  # reopening applies nothing twice
    assert again.schema_version == len(MIGRATIONS)


def test_record_case_with_calls_and_replace(tmp_path) -> None:
    store = Store(tmp_path / "evals.sqlite")
    run = make_run(store)
    case = CaseRow(nodeid="t.py::test[a-smollm2]", benchmark="t.py::test", model="smollm2", outcome="passed",
                   scores={"f1": 0.5})
    calls = [CallRow(kind="generate", model="smollm2", input_tokens=3, output_tokens=2, latency_s=0.1)]
    turns = [TurnRow(conversation=1, position=0, role="user", content="hi"),
             TurnRow(conversation=1, position=1, role="assistant", content="hello")]
    tools = [ToolCallRow(conversation=1, position=1, name="add", arguments='{"a": 1}', result="2", duration_s=0.01)]
    store.record_case(run, CaseRecord(case, calls, turns, tools))
    store.record_case(run, CaseRecord(CaseRow(**{**case.__dict__, "outcome": "failed"}), calls + calls, turns[:1]))
    cases = store.cases(run)
    assert [(c["outcome"], c["scores"]) for c in cases] == [("failed", '{"f1": 0.5}')]
    assert len(store.calls(run)) == 2 and all(c["case_id"] == cases[0]["id"] for c in store.calls(run))
    # the replaced case's turns and tool calls went with it
    assert [t["content"] for t in store.rows("turns", run)] == ["hi"]
    assert store.rows("tool_calls", run) == []
    store.finish_run(run, exit_status=0)
    assert store.runs()[0]["status"] == "finished"


def test_a_failed_write_leaves_no_half_case(tmp_path) -> None:
    store = Store(tmp_path / "evals.sqlite")
    run = make_run(store)
    case = CaseRow(nodeid="n", benchmark="b", model="m", outcome="passed")
    bad_call = CallRow(kind="generate", model="m")
    bad_call.__dict__["no_such_column"] = 1
    with pytest.raises(sqlite3.OperationalError):
        store.record_case(run, CaseRecord(case, [bad_call]))
    assert store.cases(run) == []


def test_corrupt_file_is_reported_and_left_alone(tmp_path) -> None:
    path = tmp_path / "evals.sqlite"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(path)
    assert path.read_bytes() == b"garbage" * 1000


def test_locked_database_is_reported(tmp_path) -> None:
    path = tmp_path / "evals.sqlite"
    Store(path).close()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")  # another session writing
    try:
        with pytest.raises(StoreError, match="locked by another running session"):
            Store(path)
    finally:
        holder.rollback()
        holder.close()
    Store(path).close()  # free again: opens


@pytest.mark.parametrize(
    "sqlite_message, expected",
    [
        ("attempt to write a readonly database", "cannot write the database"),
        ("unable to open database file", "cannot write the database"),
        ("database is locked", "locked by another running session"),
        ("file is not a database", "not a usable SQLite database"),
    ],
)
def test_sqlite_errors_become_one_line_with_the_fix(tmp_path, sqlite_message: str, expected: str) -> None:
    store = Store(tmp_path / "evals.sqlite")
    message = str(store.error(sqlite3.OperationalError(sqlite_message)))
    assert expected in message and "--evals-db PATH" in message and "\n" not in message

"""Every call of a case batched: second turns and tool rounds go in one backend call per round for the
window; a tool runs once per call the model makes; fixtures, captured output and teardowns stay each
case's own while its siblings are set up beside it. Plugin logic with a fake backend that logs the size
of every call; the embedded default's batched turns are compared with one-at-a-time in test_hf.py."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import FAKE_BACKEND, rows

LOGGING_BACKEND = FAKE_BACKEND.replace('''    def chat(self, requests):
        # "call NAME {json}" asks for that tool call; a tool result is read back; anything else is reversed
        replies = []''', '''    def chat(self, requests):
        # "call NAME {json}" asks for that tool call; a tool result is read back; anything else is reversed
        with open("backend_calls.log", "a") as log:
            log.write(json.dumps(len(requests)) + "\\n")
        replies = []''')

DIALOGUES = '''
import pytest

def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first.
        b: The second.
    """
    with open("tools.log", "a") as log:
        log.write(f"{a}+{b}\\n")
    return a + b

@pytest.mark.parametrize("i", range(6))
def test_dialogue(model, i):
    chat = model.conversation(system="be brief", tools=[add])
    first = chat.say(f"hello {i}")
    assert first.text == f"{i} olleh"
    second = chat.say(f'call add {{"a": {i}, "b": 10}}')  # a tool round, then the answer
    assert second.text == f"the answer is {i + 10}" and second.tool_calls[0].result == i + 10
    third = chat.say(f"bye {i}")
    assert third.text == f"{i} eyb"
'''


def run(pytester: pytest.Pytester, *args: str, db: str = ".evals/evals.sqlite") -> subprocess.CompletedProcess:
    for name in ("backend_calls.log", "tools.log"):
        (pytester.path / name).unlink(missing_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m",
                           "--evals-db", db, *args], cwd=pytester.path, env=environment, capture_output=True,
                          text=True, timeout=120)


def sizes(pytester: pytest.Pytester) -> list[int]:
    return [json.loads(line) for line in (pytester.path / "backend_calls.log").read_text().split()]


def transcript(pytester: pytest.Pytester, db: str) -> list[tuple]:
    con = sqlite3.connect(pytester.path / db)
    try:
        return con.execute("SELECT cases.nodeid, cases.outcome, turns.position, turns.role, turns.content, "
                           "turns.tool_calls FROM turns JOIN cases ON cases.id = turns.case_id "
                           "ORDER BY cases.nodeid, turns.position").fetchall()
    finally:
        con.close()


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(LOGGING_BACKEND)
    pytester.makepyfile(test_dialogues=DIALOGUES)
    return pytester


def test_every_turn_and_tool_round_is_one_call_for_the_window(project: pytest.Pytester) -> None:
    batched = run(project)
    assert batched.returncode == 0, batched.stdout[-3000:]
    # turn 1; turn 2's tool call; the answer after the tool's result; turn 3
    assert sizes(project) == [6, 6, 6, 6]
    assert sorted((project.path / "tools.log").read_text().split()) == sorted(f"{i}+10" for i in range(6))
    assert rows(project, "SELECT count(*), sum(batched) FROM calls") == [(24, 24)]
    (tool_rows,) = rows(project, "SELECT count(*) FROM tool_calls")[0]
    assert tool_rows == 6  # the tool ran once per call the model made, and each run is recorded

    alone = run(project, "--evals-batch-size", "1", db="alone.sqlite")
    assert alone.returncode == 0, alone.stdout[-3000:]
    assert sizes(project) == [1] * 24
    assert len((project.path / "tools.log").read_text().split()) == 6
    same = [row[:5] for row in transcript(project, ".evals/evals.sqlite")]
    assert same == [row[:5] for row in transcript(project, "alone.sqlite")] and len(same) == 6 * 9


FIXTURES = '''
import pytest

EVENTS = []

def event(text):
    with open("events.log", "a") as log:
        log.write(text + "\\n")

@pytest.fixture(scope="module")
def shared():
    event("shared up")
    yield object()
    event("shared down")

@pytest.fixture
def base(base, i):  # overrides conftest's base, and takes it: each case its own of both
    return base + [i]

@pytest.fixture
def cleanup(request):  # a factory whose finalizers a body adds after its model call
    def add(text):
        request.addfinalizer(lambda: event(f"cleanup {text}"))
    return add

@pytest.fixture
def own(i, shared):
    event(f"up {i}")
    if i == 2:
        raise RuntimeError("fixture fails for case 2")
    yield {"i": i, "shared": shared}
    event(f"down {i}")
    if i == 4:
        raise RuntimeError("teardown fails for case 4")

@pytest.mark.parametrize("i", range(6))
def test_fixtures(model, own, shared, base, cleanup, i):
    assert own["i"] == i and own["shared"] is shared  # its own value, beside its siblings' values
    print(f"before {i}")
    reply = model.generate(f"q{i}")
    print(f"after {i}")
    assert base == [f"conftest {i}", i], base
    cleanup(str(i))
    event(f"body {i}")
    assert i != 3, reply.text

def test_next_module_item():
    event("next")
'''


def test_fixtures_output_and_teardowns_stay_each_cases_own(project: pytest.Pytester) -> None:
    project.makeconftest(LOGGING_BACKEND + """
import pytest

@pytest.fixture
def base(i):
    return [f"conftest {i}"]
""")
    project.makepyfile(test_fixtures=FIXTURES)
    done = run(project, "test_fixtures.py", "-rA")
    events = (project.path / "events.log").read_text().split("\n")
    # each case is set up before any body goes on, each torn down as its body ends, the module fixture once
    assert events[0] == "shared up" and events.count("shared up") == 1 and events[-2] == "shared down"
    assert [e for e in events if e.startswith("up")] == [f"up {i}" for i in range(6)]
    assert events.index("up 5") < events.index("body 0")  # the window set every case up first
    assert sorted(e for e in events if e.startswith("down")) == [f"down {i}" for i in (0, 1, 3, 4, 5)]
    assert events.index("next") > events.index("down 5") and events.index("shared down") > events.index("next")
    # a finalizer added after the model call ran at its own case's teardown, before its fixtures'
    for i in (0, 1, 3, 4, 5):
        assert events.index(f"body {i}") < events.index(f"cleanup {i}") < events.index(f"down {i}")
    got = dict(rows(project, "SELECT nodeid, outcome FROM cases"))
    assert got == {f"test_fixtures.py::test_fixtures[{i}-fake:m]": o
                   for i, o in enumerate(["passed", "passed", "error", "failed", "error", "passed"])}
    out = done.stdout
    assert "ERROR at setup of test_fixtures[2-fake:m]" in out and "fixture fails for case 2" in out
    assert "ERROR at teardown of test_fixtures[4-fake:m]" in out and "teardown fails for case 4" in out
    # what a body printed before and after its model call is in its own report, and only there
    for i in (0, 1, 4, 5):  # (a wrong answer is one line, without its output)
        sections = [part for part in out.split("\n_") if f"test_fixtures[{i}-fake:m] _" in part
                    and "Captured stdout call" in part]
        assert sections, out[-3000:]
        for section in sections:  # (case 4 has two: its teardown's error, and its passed call)
            printed = section.split("Captured stdout call")[1]
            assert f"before {i}" in printed and f"after {i}" in printed, section
            assert not any(f"before {j}" in printed for j in range(6) if j != i), section

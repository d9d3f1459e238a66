"""Fixtures shared by the test suite: a fake backend for plugin logic, the real llama.cpp server."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

pytest_plugins = ["pytester"]

# A shell that starts a command in the background (`cmd &` without job control, as some CI launchers do)
# starts it with SIGINT ignored, and every process it starts inherits that: the tests that send SIGINT
# to a pytest run would see it ignored. A handler set here is reset to the default in the processes the
# tests start, so their Ctrl-C works wherever this suite runs.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# pytester's in-process runs drop the modules first imported during the run; httpcore imports parts of
# itself lazily on the first connection, and a second copy of them breaks httpx's exception mapping.
# One refused loopback connection here loads them for good.
try:
    httpx.get("http://127.0.0.1:9/", timeout=0.5)
except httpx.HTTPError:
    pass

# The same for torch: a test that uses `pytester` drops at its end every module imported while it ran,
# and torch cannot be imported twice in one process. Imported here, it is never among them.
if importlib.util.find_spec("torch") is not None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch warns about the pynvml shim
        import torch  # noqa: F401

# A backend for tests of the plugin's own logic (ids, records, outcomes, summary). It never stands
# in for a backend a feature claims to support: those are tested on real models and servers.
FAKE_BACKEND = '''
import json

from pytest_evals.backends.base import Backend, Loglikelihood, Reply, ToolCall
from pytest_evals.backends.specs import SpecError


class FakeBackend(Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools"})
    batches_across_cases = True  # as the real backends: the plugin's batching is exercised with it

    @classmethod
    def check(cls, spec):
        if spec.target == "missing":
            raise SpecError(f"--model {spec.raw}: fake model is missing; pick another")

    def generate(self, requests):
        replies = []
        for r in requests:
            if "boom" in r.prompt:
                raise ConnectionError("server went away")
            replies.append(Reply(text=f"{self.spec.target}:{r.prompt.upper()}", prompt_tokens=len(r.prompt),
                                 completion_tokens=3, latency_s=0.001, ttft_s=0.0005))
        return replies

    def chat(self, requests):
        # "call NAME {json}" asks for that tool call; a tool result is read back; anything else is reversed
        replies = []
        for r in requests:
            last = r.messages[-1]
            if last["role"] == "user" and last["content"].startswith("call ") and r.tool_choice != "none":
                _, name, arguments = last["content"].split(" ", 2)
                replies.append(Reply(text="", tool_calls=(ToolCall(name, json.loads(arguments), id="c1"),)))
            elif last["role"] == "tool":
                replies.append(Reply(text=f"the answer is {last['content']}", prompt_tokens=1, completion_tokens=1))
            else:
                replies.append(Reply(text=last["content"][::-1], prompt_tokens=1, completion_tokens=1))
        return replies

    def loglikelihood(self, requests):
        # shorter continuations are more likely
        return [Loglikelihood(-float(len(r.continuation)), True, 1, 1) for r in requests]


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
'''


def rows(pytester: pytest.Pytester, sql: str) -> list[tuple]:
    """Rows of a query on the default database of a pytester project."""
    import sqlite3

    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def cases_stored(db: Path) -> int:
    """Cases a running session has committed to ``db`` so far (0 before the file or its schema exists)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM cases").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the schema is being written
        return 0


def counts(result: pytest.RunResult) -> dict[str, int]:
    """pytest's final counts, eval cases with wrong answers (``wrong``) included: pytester's
    ``assert_outcomes`` knows no such category. Warnings are left out."""
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("warnings", "warning")}


@pytest.fixture
def fake_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project whose conftest registers the ``fake:`` backend."""
    pytester.makeconftest(FAKE_BACKEND)
    return pytester


def pytest_runtest_setup(item: pytest.Item) -> None:
    """gpu-marked tests skip cleanly on machines without a CUDA GPU (before their fixtures load)."""
    if item.get_closest_marker("gpu") is None:
        return
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs a CUDA GPU (torch is not installed)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch warns about the pynvml shim
        import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def in_ci() -> bool:
    """Whether this run is CI's: CI set to true, 1 or yes (any case). CI=false, 0 or empty is a developer's
    run, which a plain ``os.environ.get("CI")`` would have taken for CI."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(message: str, module_level: bool = False) -> NoReturn:
    """A real part a test needs is missing: the test skips locally; in CI it fails, since a proof that
    cannot run must not pass as a skip there."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


def _required(module: str, install: str, module_level: bool = False) -> None:
    """Skip when a real part is missing locally; in CI (``in_ci``) a missing part is a failure."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        found = False
    if not found:
        missing(f"{module} is not installed ({install})", module_level)


def require(module: str, install: str, module_level: bool = False):
    """``module``, imported; where it is missing the test skips, except under CI=true, where it fails."""
    _required(module, install, module_level)
    return importlib.import_module(module)


def require_hf() -> None:
    """The transformers backend's packages (the hf extra: torch, transformers, accelerate), for a test that
    loads a model through it; the HTTP tests need only transformers (``embedded_gguf_path``)."""
    from pytest_evals.backends.hf import HF_PACKAGES

    for package in HF_PACKAGES:
        _required(package, "pip install -e '.[hf]'")


def embedded_gguf_path() -> Path:
    _required("transformers", "pip install -e '.[hf]'")
    try:
        from pytest_evals.backends.gguf_copies import embedded_gguf

        return embedded_gguf()
    except Exception as exc:  # SpecError: the package is missing
        missing(str(exc))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_llama_server(gguf: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    _required("llama_cpp", "pip install 'llama-cpp-python[server]'")  # not a server that exits at once
    port = free_port()
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048",
             # by default a new request cuts the stream in progress; xdist workers send concurrently
             *(extra or ("--interrupt_requests", "False"))],
            stdout=handle, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_serving(proc, url, log, "llama.cpp server")
    return proc, url


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not answer within {timeout_s:g} s; see {log}")


@pytest.fixture
def stub_server(tmp_path: Path):
    """Starts tests/stubserver.py (echo completions after a latency, 429 to every Nth request, model
    lists after a delay): ``url = stub_server(latency_s, rate_limit_every, models_delay_s)``; stopped
    after the test."""
    _required("uvicorn", "pip install 'llama-cpp-python[server]'")
    procs: list[subprocess.Popen] = []

    def start(latency_s: float = 0.05, rate_limit_every: int = 0, models_delay_s: float = 0.0) -> str:
        port = free_port()
        log = tmp_path / f"stub{port}.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "stubserver.py"), str(port),
                                     str(latency_s), str(rate_limit_every), str(models_delay_s)],
                                    stdout=handle, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_serving(proc, url, log, "stub server", timeout_s=30)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _serve(tmp_path_factory: pytest.TempPathFactory, *extra: str):
    _required("llama_cpp", "pip install 'llama-cpp-python[server]'")
    gguf = embedded_gguf_path()
    proc, url = start_llama_server(gguf, tmp_path_factory.mktemp("llama") / "server.log", *extra)
    yield url
    stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """The real OpenAI-compatible llama.cpp server on a free loopback port, serving SmolLM2."""
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="session")
def llama_tools_server(tmp_path_factory: pytest.TempPathFactory):
    """The same server with llama.cpp's tool-calling chat format (grammar-constrained forced calls)."""
    yield from _serve(tmp_path_factory, "--interrupt_requests", "False", "--chat_format", "chatml-function-calling")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default, loaded once per test process through the transformers backend."""
    require_hf()
    embedded_gguf_path()
    from pytest_evals.backends.base import BackendSettings
    from pytest_evals.backends.hf import HFBackend
    from pytest_evals.backends.specs import parse_spec

    return HFBackend(parse_spec("smollm2"), BackendSettings(batch_size=8))

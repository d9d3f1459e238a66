"""A backend registered through the hook is treated as a built-in one: the docs' one-file backend
runs on a real model, and a registered class's declarations (``takes_url``, ``transport_options``)
drive spec parsing and case keys as they do for built-in backends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import FAKE_BACKEND, _required, embedded_gguf_path, rows

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "backends.md"

SUITE = """
import pytest

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_count(model, n):
    reply = model.generate(f"Count: {n}, ", max_tokens=4, stop=["\\n"])
    assert reply.text

def test_chat(model):
    assert model.chat("Say hello.", max_tokens=8).text
"""


def guide_backend() -> str:
    """The Python block of the backends how-to's "Writing a backend" section, as it shows it."""
    section = GUIDE.read_text(encoding="utf-8").split("## Writing a backend\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section shows one complete backend"
    return blocks[0]


@pytest.mark.slow
def test_the_guide_backend_runs_on_a_real_model(pytester: pytest.Pytester) -> None:
    _required("llama_cpp", "pip install 'llama-cpp-python[server]'")
    gguf = embedded_gguf_path()
    pytester.makeconftest(guide_backend())
    pytester.makepyfile(test_suite=SUITE)
    spec = f"llamacpp:{gguf}?n_threads=2"
    result = pytester.runpytest_subprocess(f"--model={spec}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"evals: models llamacpp:{gguf}?n_threads=2 (chat, generate); *"])
    calls = rows(pytester, "select kind, model, spec, input_tokens, output_tokens, error from calls")
    assert len(calls) == 4 and {c[0] for c in calls} == {"generate", "chat"}
    assert all(c[1] == f"llamacpp:{gguf}" and c[2] == spec and c[5] is None for c in calls)
    assert all(c[3] and c[3] > 0 and c[4] and c[4] > 0 for c in calls)  # usage from llama.cpp itself

    # n_threads is a transport option: with another value the finished cases are replayed, not run
    again = pytester.runpytest_subprocess(f"--model=llamacpp:{gguf}?n_threads=1", "--evals-resume",
                                          "-p", "no:cacheprovider")
    again.assert_outcomes(passed=4)
    again.stdout.fnmatch_lines(["*evals-resume: 4 cases replayed from run 1, not run again*"])
    assert rows(pytester, "select count(*), count(resumed_from) from cases where run_id = 2") == [(4, 4)]


# A registered backend that names a server: its class, not a list in the plugin, says so.
REMOTE_BACKEND = FAKE_BACKEND + '''

class RemoteBackend(FakeBackend):
    takes_url = True
    transport_options = frozenset({"pool_size"})

    @classmethod
    def default_url(cls):
        return "http://127.0.0.1:9/default"

    def generate(self, requests):
        return [Reply(text=f"{self.spec.base_url}|{r.prompt}") for r in requests]


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
    register("remote", RemoteBackend)
'''


def test_a_registered_backend_gets_url_parsing_and_transport_options(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(REMOTE_BACKEND)
    pytester.makepyfile(test_suite="""
        def test_url(model):
            assert model.generate("hi").text == "http://127.0.0.1:8000/v1|hi"
    """)
    spec = "remote:m@http://user:secret@127.0.0.1:8000/v1/?pool_size=2&style=terse"
    result = pytester.runpytest(f"--model={spec}")
    result.assert_outcomes(passed=1)
    stored = rows(pytester, "select spec, case_key from calls join cases on cases.id = calls.case_id")
    assert stored[0][0] == "remote:m@http://127.0.0.1:8000/v1?pool_size=2&style=terse"  # no credentials
    assert "secret" not in str(rows(pytester, "select args from runs"))

    # a transport option changes nothing that decides the answer: the case is replayed
    again = pytester.runpytest("--model=remote:m@http://127.0.0.1:8000/v1?pool_size=9&style=terse",
                               "--evals-resume")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*evals-resume: 1 cases replayed from run 1, not run again*"])
    # any other option is part of the model's identity: the case runs again
    fresh = pytester.runpytest("--model=remote:m@http://127.0.0.1:8000/v1?pool_size=9&style=long",
                               "--evals-resume")
    fresh.assert_outcomes(passed=1)
    assert "replayed" not in fresh.stdout.str()


def test_a_registered_backend_without_a_url_uses_its_default(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(REMOTE_BACKEND)
    pytester.makepyfile(test_suite="""
        def test_default(model):
            assert model.generate("x").text == "http://127.0.0.1:9/default|x"
    """)
    pytester.runpytest("--model=remote:m").assert_outcomes(passed=1)
    result = pytester.runpytest("--model=remote:m@ftp://x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --model 'remote:m@ftp://x': the URL after '@' must start with http*"])


def test_a_broken_lazy_path_is_one_line_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_evals_register_backends(register):
            register("mine", "no_such_module.backend:MyBackend")
    """)
    pytester.makepyfile(test_suite="def test_x(model):\n    pass\n")
    result = pytester.runpytest("--model=mine:x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: the backend registered for 'mine:' specs (no_such_module.backend:MyBackend) "
                                 "cannot be imported (ModuleNotFoundError: *); fix the path given to register()"])

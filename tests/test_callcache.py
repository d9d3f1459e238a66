"""The call cache (--evals-cache): its key, its modes, what it records, and replay with no model at all."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import FAKE_BACKEND, embedded_gguf_path, require_hf, rows, start_llama_server, stop

from pytest_evals.backends.base import ChatRequest, GenerateRequest, Reply
from pytest_evals.backends.registry import BackendRegistry
from pytest_evals.backends.specs import parse_spec
from pytest_evals.calls import cache as call_cache
from pytest_evals.calls.cache import CallCache, call_key
from pytest_evals.calls.pool import BackendPool

# The fake backend, counting the requests that reach it and the instances made (a loaded model).
COUNTING = FAKE_BACKEND + '''
import os

_generate, _chat, _init = FakeBackend.generate, FakeBackend.chat, FakeBackend.__init__


def _log(what, n=1):
    with open(os.environ["FAKE_LOG"], "a") as handle:
        handle.write(f"{what} {n}\\n")


def __init__(self, spec, settings):
    _log("load")
    _init(self, spec, settings)


def generate(self, requests):
    _log("request", len(requests))
    version = os.environ.get("FAKE_VERSION", "")
    return [Reply(text=r.text + version, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                  latency_s=0.25, ttft_s=0.125) for r in _generate(self, requests)]


def chat(self, requests):
    _log("request", len(requests))
    return _chat(self, requests)


FakeBackend.__init__, FakeBackend.generate, FakeBackend.chat = __init__, generate, chat
'''

SUITE = """
import pytest

@pytest.mark.parametrize("word", ["ab", "cd", "ef"])
def test_upper(model, word):
    assert model.generate(word, max_tokens=4).text.startswith("m:" + word.upper())

def test_tool(model):
    def add(a: int, b: int) -> int:
        return a + b
    assert model.chat("call add {\\"a\\": 2, \\"b\\": 3}", tools=[add]).text == "the answer is 5"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(COUNTING)
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("FAKE_LOG", str(pytester.path / "fake.log"))
    return pytester


def reached(pytester: pytest.Pytester) -> dict[str, int]:
    """Requests that reached the fake backend, and backends loaded, since the last look."""
    log = pytester.path / "fake.log"
    counts = {"request": 0, "load": 0}
    if log.exists():
        for line in log.read_text().splitlines():
            what, n = line.split()
            counts[what] += int(n)
        log.unlink()
    return counts


# --- the key ------------------------------------------------------------------------------------------
def test_every_part_of_a_call_enters_its_key() -> None:
    generate = GenerateRequest("2+2=", max_tokens=8, temperature=0.0, stop=("\n",))
    base = call_key("fake", "m", "generate", generate)
    variants = {
        "backend kind": call_key("other", "m", "generate", generate),
        "model": call_key("fake", "m2", "generate", generate),
        "method": call_key("fake", "m", "chat", generate),
        "prompt": call_key("fake", "m", "generate", GenerateRequest("2+3=", 8, 0.0, ("\n",))),
        "max_tokens": call_key("fake", "m", "generate", GenerateRequest("2+2=", 9, 0.0, ("\n",))),
        "temperature": call_key("fake", "m", "generate", GenerateRequest("2+2=", 8, 0.7, ("\n",))),
        "stop": call_key("fake", "m", "generate", GenerateRequest("2+2=", 8, 0.0, ("\n\n",))),
        "sample": call_key("fake", "m", "generate", generate, sample=1),
    }
    assert len({base, *variants.values()}) == len(variants) + 1, variants
    assert call_key("fake", "m", "generate", GenerateRequest("2+2=", 8, 0.0, ("\n",))) == base  # and it is stable

    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    chat = ChatRequest(({"role": "user", "content": "hi"},), max_tokens=8, tools=(tool,), tool_choice="auto")
    other_tool = {"type": "function", "function": {**tool["function"], "name": "sub"}}
    chats = [chat,
             ChatRequest(({"role": "user", "content": "hi!"},), 8, 0.0, (tool,), "auto"),
             ChatRequest(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}), 8, 0.0, (tool,)),
             ChatRequest(chat.messages, 8, 0.0, (other_tool,), "auto"),  # tool schemas
             ChatRequest(chat.messages, 8, 0.0, (tool,), "required"),  # tool_choice
             ChatRequest(chat.messages, 8, 0.0, (), "auto")]
    assert len({call_key("fake", "m", "chat", c) for c in chats}) == len(chats)


def test_the_model_part_keeps_request_options_and_drops_transport_options() -> None:
    pool = BackendPool(BackendRegistry(), settings=None)  # type: ignore[arg-type]  # nothing is loaded

    def model(text: str) -> str:
        return pool.model_and_weights(parse_spec(text))[0]

    assert model("openai:m@http://h:1/v1?seed=1") != model("openai:m@http://h:1/v1?seed=2")  # extra request fields
    assert model("openai:m@http://h:1/v1?top_p=0.9") != model("openai:m@http://h:1/v1")
    assert model("openai:m@http://h:1/v1") != model("openai:m2@http://h:1/v1")
    assert model("hf:/m.gguf?batch_size=2") == model("hf:/m.gguf?batch_size=16")  # how it runs, not what it says
    assert model("hf:/m.gguf?device=cpu") == model("hf:/m.gguf")


def test_an_answer_recorded_for_other_weights_is_stale_but_unknown_weights_replay(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "c.sqlite", "use")
    request = GenerateRequest("q")
    key = call_key("hf", "m", "generate", request)
    cache.put(key, backend="hf", model="m", fingerprint="weights-a", method="generate", sample=0, request=request,
              result=Reply("answer", prompt_tokens=3, completion_tokens=1, latency_s=0.5))
    assert cache.get(key, "weights-b") is None and cache.was_stale(key)  # the weights changed: call again
    found = cache.get(key, "weights-a")
    assert found == Reply("answer", prompt_tokens=3, completion_tokens=1, latency_s=0.5, cached=True)
    assert cache.get(key, None) is not None  # this machine cannot tell (no weights here): the recording holds
    cache.close()


def test_an_answer_comes_back_as_it_was_given(tmp_path: Path) -> None:
    """Down to the order of a tool call's arguments, which the next request sends back as written."""
    from pytest_evals.backends.base import Loglikelihood, ToolCall

    cache = CallCache(tmp_path / "c.sqlite", "use")
    reply = Reply("", prompt_tokens=5, completion_tokens=2, latency_s=0.3, ttft_s=0.1, finish_reason="tool_calls",
                  tool_calls=(ToolCall("calculate", {"b": 2.0, "op": "+", "a": 1}, id="call_1"),), backend="hf:x")
    scored = Loglikelihood(-1.5, True, 4, 1, latency_s=0.2)
    for key, result in (("k1", reply), ("k2", scored)):
        cache.put(key, backend="hf", model="m", fingerprint=None, method="chat", sample=0, request=GenerateRequest(""),
                  result=result)
    got = cache.get("k1", None)
    assert got == Reply(**{**vars(reply), "cached": True}) and list(got.tool_calls[0].arguments) == ["b", "op", "a"]
    assert cache.get("k2", None) == Loglikelihood(-1.5, True, 4, 1, latency_s=0.2, cached=True)
    cache.close()


# --- the modes, on a fake backend (the plugin's logic) ---------------------------------------------------
def test_a_rerun_answers_every_call_from_the_cache_even_after_the_test_changed(project: pytest.Pytester) -> None:
    first = project.runpytest("--model=fake:m", "--evals-cache=use")
    first.assert_outcomes(passed=4)
    assert reached(project) == {"request": 5, "load": 1}  # 3 generations, the tool call and the answer to it
    first.stdout.fnmatch_lines(["evals-cache (use): 0 of 5 model calls answered from *cache.sqlite; "
                                "5 calls made, their answers stored"])
    # a change to the test's source changes its case key (resume would run it again); its calls are the same
    project.makepyfile(test_suite="# reworded\n" + SUITE)
    second = project.runpytest("--model=fake:m", "--evals-cache=use")
    second.assert_outcomes(passed=4)
    assert reached(project) == {"request": 0, "load": 1}
    second.stdout.fnmatch_lines(["evals-cache (use): 5 of 5 model calls answered from *; 0 calls made"])
    live, cached = (rows(project, f"SELECT kind, output_text, latency_s, ttft_s, input_tokens, output_tokens, cost_usd, "
                                  f"cached, cached_latency_s, cached_ttft_s, cached_input_tokens, cached_output_tokens "
                                  f"FROM calls WHERE run_id = {run} AND kind = 'generate' ORDER BY id")
                    for run in (1, 2))
    assert [r[1] for r in live] == [r[1] for r in cached]  # the same answers
    shown = subprocess.run([sys.executable, "-m", "pytest_evals.cli", "show", "latest"], capture_output=True,
                           text=True, cwd=project.path)
    assert "  5 of 5 model calls were answered from the call cache" in shown.stdout.splitlines()
    for call, hit in zip(live, cached):
        assert call[7] is None and call[2] == 0.25 and call[4] == 2 and call[5] == 3
        # the recorded call's timings and tokens in their own columns; this run: a lookup, no tokens, $0
        assert hit[7] == 1 and hit[8:12] == (0.25, 0.125, 2, 3)
        assert hit[2] < 0.25 and hit[3] is None and hit[4] is None and hit[5] is None and hit[6] == 0.0


def test_replay_loads_no_model_and_a_missing_call_is_one_line(project: pytest.Pytester) -> None:
    project.runpytest("--model=fake:m", "--evals-cache=use").assert_outcomes(passed=4)
    reached(project)
    replayed = project.runpytest("--model=fake:m", "--evals-cache=replay")
    replayed.assert_outcomes(passed=4)
    assert reached(project) == {"request": 0, "load": 0}  # not even constructed
    replayed.stdout.fnmatch_lines(["evals: call cache *cache.sqlite (replay; no model is loaded)",
                                   "evals-cache (replay): 5 of 5 model calls answered from *; none was missing"])
    # a case the recording never made
    project.makepyfile(test_new="def test_new(model):\n    assert model.generate('zz', max_tokens=4).text\n")
    missed = project.runpytest("--model=fake:m", "--evals-cache=replay", "test_new.py")
    missed.assert_outcomes(errors=1)
    missed.stdout.fnmatch_lines([
        "E   pytest_evals.calls.cache.CacheMiss: generate('zz') for fake:m is not in the call cache *cache.sqlite; "
        "record it with --evals-cache=use (--evals-cache=refresh re-records every call)",
        "evals-cache (replay): 0 of 1 model calls answered from *; 1 calls were not in it, and their cases ended as "
        "errors (record them with --evals-cache=use)"])
    assert reached(project) == {"request": 0, "load": 0}
    assert rows(project, "SELECT outcome FROM cases WHERE nodeid LIKE '%test_new%'") == [("error",)]


def test_replay_without_a_cache_and_a_bad_mode_stop_at_start_up(project: pytest.Pytester) -> None:
    result = project.runpytest("--model=fake:m", "--evals-cache=replay")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *cache.sqlite: no call cache to replay; record one first with "
                                 "--evals-cache=use (or pass --evals-cache-path)"])
    result = project.runpytest("--model=fake:m", "--evals-cache=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-cache 'maybe': expected one of off, use, refresh, replay"])
    (project.path / "junk.sqlite").write_text("not a database")
    result = project.runpytest("--model=fake:m", "--evals-cache=use", "--evals-cache-path=junk.sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *junk.sqlite: the call cache cannot be used (*); move it aside, or pass "
                                 "another --evals-cache-path"])
    assert reached(project)["request"] == 0


def test_refresh_calls_again_and_replaces_the_answers(project: pytest.Pytester, monkeypatch) -> None:
    project.runpytest("--model=fake:m", "--evals-cache=use").assert_outcomes(passed=4)
    reached(project)
    monkeypatch.setenv("FAKE_VERSION", "-v2")
    project.runpytest("--model=fake:m", "--evals-cache=refresh").assert_outcomes(passed=4)
    assert reached(project)["request"] == 5
    monkeypatch.delenv("FAKE_VERSION")
    project.runpytest("--model=fake:m", "--evals-cache=replay").assert_outcomes(passed=4)
    assert reached(project)["request"] == 0
    assert {r[0] for r in rows(project, "SELECT output_text FROM calls WHERE run_id = 3 AND kind = 'generate'")} == {
        "m:AB-v2", "m:CD-v2", "m:EF-v2"}


def test_a_failed_call_is_never_stored(project: pytest.Pytester) -> None:
    project.makepyfile(test_boom="def test_boom(model):\n    model.generate('boom')\n")
    project.runpytest("--model=fake:m", "--evals-cache=use", "test_boom.py").assert_outcomes(errors=1)
    con = sqlite3.connect(project.path / ".evals" / "cache.sqlite")
    assert con.execute("SELECT count(*) FROM answers").fetchone() == (0,)
    con.close()
    project.runpytest("--model=fake:m", "--evals-cache=replay", "test_boom.py").stdout.fnmatch_lines(
        ["*CacheMiss: generate('boom') for fake:m is not in the call cache*"])


def test_xdist_workers_share_one_cache_file(project: pytest.Pytester) -> None:
    project.makepyfile(test_many="""
        import pytest

        @pytest.mark.parametrize("i", range(40))
        def test_many(model, i):
            assert model.generate(f"q{i}", max_tokens=4).text == f"m:Q{i}"
        """)
    recorded = project.runpytest_subprocess("-n", "2", "--model=fake:m", "--evals-cache=use", "test_many.py")
    recorded.assert_outcomes(passed=40)
    assert reached(project)["request"] == 40
    con = sqlite3.connect(project.path / ".evals" / "cache.sqlite")
    assert con.execute("SELECT count(*), count(DISTINCT key) FROM answers").fetchone() == (40, 40)
    con.close()
    replayed = project.runpytest_subprocess("-n", "2", "--model=fake:m", "--evals-cache=replay", "test_many.py")
    replayed.assert_outcomes(passed=40)
    replayed.stdout.fnmatch_lines(["evals-cache (replay): 40 of 40 model calls answered from *; none was missing"])
    assert reached(project) == {"request": 0, "load": 0}


def test_the_summary_says_what_the_cached_calls_would_have_cost(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nevals_prices =\n    fake:* 1000 2000\n")
    project.runpytest("--model=fake:m", "--evals-cache=use", "-k", "upper").assert_outcomes(passed=3)
    result = project.runpytest("--model=fake:m", "--evals-cache=use", "-k", "upper")
    # three generations of 2 prompt and 3 completion tokens at $1000/$2000 per million
    result.stdout.fnmatch_lines(["evals-cache (use): 3 of 3 model calls answered from * "
                                 "(they would have cost $0.0240); 0 calls made"])
    assert rows(project, "SELECT cost_usd, cost_basis, round(cached_cost_usd, 6) FROM calls WHERE run_id = 2") == [
        (0.0, "cached", 0.008)] * 3
    assert rows(project, "SELECT cost_usd FROM runs WHERE id = 2") == [(0.0,)]


# --- real backends ---------------------------------------------------------------------------------------
REAL_SUITE = """
def test_generate(model):
    assert model.generate("The capital of France is", max_tokens=6).text

def test_chat(model):
    assert model.chat("Say hello.", max_tokens=8).text

def test_conversation(model):
    chat = model.conversation(system="Answer in one word.", max_tokens=8)
    first = chat.say("Name a colour.")
    second = chat.say("Another one?")
    assert first.text and second.text
"""


@pytest.mark.slow
def test_openai_replay_opens_no_connection(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Recorded against a real llama.cpp server; replayed with the server gone."""
    proc, url = start_llama_server(embedded_gguf_path(), tmp_path / "server.log")
    pytester.makepyfile(test_real=REAL_SUITE)
    try:
        recorded = pytester.runpytest_subprocess(f"--model=openai:smollm2@{url}", "--evals-cache=use")
    finally:
        stop(proc)
    recorded.assert_outcomes(passed=3)
    answers = rows(pytester, "SELECT output_text FROM calls ORDER BY id")
    replayed = pytester.runpytest_subprocess(f"--model=openai:smollm2@{url}", "--evals-cache=replay")
    replayed.assert_outcomes(passed=3)  # nothing listens at the URL any more
    replayed.stdout.fnmatch_lines(["evals-cache (replay): 4 of 4 model calls answered from *; none was missing"])
    assert rows(pytester, "SELECT output_text FROM calls WHERE run_id = 2 ORDER BY id") == answers
    assert rows(pytester, "SELECT count(*) FROM calls WHERE run_id = 2 AND cached = 1") == [(4,)]


@pytest.mark.slow
def test_hf_replay_without_the_weights_imports_no_torch(pytester: pytest.Pytester, tmp_path: Path) -> None:
    require_hf()  # the first run records with the weights
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.gguf").symlink_to(embedded_gguf_path())
    pytester.makepyfile(test_real=REAL_SUITE)
    pytester.makeconftest(textwrap.dedent("""
        import os, sys

        def pytest_unconfigure(config):
            with open(os.path.join(str(config.rootpath), "modules.txt"), "w") as handle:
                handle.write(" ".join(m for m in ("torch", "transformers", "httpx") if m in sys.modules))
        """))
    spec = f"--model=hf:{weights / 'model.gguf'}"
    recorded = pytester.runpytest_subprocess(spec, "--evals-cache=use")
    recorded.assert_outcomes(passed=3)
    assert "torch" in (pytester.path / "modules.txt").read_text()
    (weights / "model.gguf").unlink()  # this machine has no model any more
    replayed = pytester.runpytest_subprocess(spec, "--evals-cache=replay", "-p", "no:randomly")
    replayed.assert_outcomes(passed=3)
    assert (pytester.path / "modules.txt").read_text().split() == []  # no torch, no transformers, no HTTP client
    assert rows(pytester, "SELECT output_text FROM calls WHERE run_id = 2 ORDER BY id") == rows(
        pytester, "SELECT output_text FROM calls WHERE run_id = 1 ORDER BY id")


def test_cache_stats_prune_and_clear(project: pytest.Pytester) -> None:
    project.runpytest("--model=fake:m", "--evals-cache=use").assert_outcomes(passed=4)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest_evals.cli", "cache", *args], capture_output=True,
                              text=True, cwd=project.path, env={**os.environ})

    stats = cli("stats")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert lines[2].split() == ["fake", "fake:m", "chat", "2", "0"]
    assert lines[3].split() == ["fake", "fake:m", "generate", "3", "0"]
    assert lines[-1].startswith(".evals/cache.sqlite: 5 answers, ")
    # ages set here, hours from any cutoff, so no run is near one, however slow or whenever it starts
    now = datetime.now(timezone.utc)
    used_at(project, [now - timedelta(days=3)] * 2 + [now - timedelta(hours=12)] * 3)
    assert cli("prune", "--older-than", "1").stdout.startswith("removed 2 answers not used for 1 days")
    assert cli("prune", "--older-than", "0").stdout.startswith("removed 3 answers not used for 0 days")
    assert cli("clear").stdout.strip() == "removed .evals/cache.sqlite (0 stored answers)"
    assert not (project.path / ".evals" / "cache.sqlite").exists()
    missing = cli("stats")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("pytest-evals: .evals/cache.sqlite: no call cache here; run pytest with "
                                      "--evals-cache=use to record one, or pass --path")


def test_prune_by_0_days_removes_an_answer_used_this_very_second(project: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Times are stored in whole seconds: an answer used at 12:00:00 when the clock reads 12:00:00.9 is as
    old as the cutoff, and 0 days removes it. The clock is fixed here: on a real one the prune may fall in a
    later second, and a cutoff that kept such an answer (< for <=) would pass unseen."""
    project.runpytest("--model=fake:m", "--evals-cache=use").assert_outcomes(passed=4)
    used = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    used_at(project, [used] * 5)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return used + timedelta(microseconds=900_000)

    monkeypatch.setattr(call_cache, "datetime", Clock)
    path = project.path / ".evals" / "cache.sqlite"
    assert call_cache.prune(path, 1) == 0
    assert call_cache.prune(path, 0) == 5


def used_at(project: pytest.Pytester, times: list[datetime]) -> None:
    """Sets when each stored answer was last used, as the cache writes it (UTC, whole seconds)."""
    con = sqlite3.connect(project.path / ".evals" / "cache.sqlite")
    try:
        keys = [key for (key,) in con.execute("SELECT key FROM answers ORDER BY key")]
        assert len(keys) == len(times)
        con.executemany("UPDATE answers SET used_at = ? WHERE key = ?",
                        [(t.isoformat(timespec="seconds"), key) for t, key in zip(times, keys)])
        con.commit()
    finally:
        con.close()

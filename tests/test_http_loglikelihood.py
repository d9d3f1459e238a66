"""Loglikelihood over HTTP: the ``openai:`` backend's echo path against a server that scores prompts with
transformers (tests/logprob_server.py, aligned as vLLM's server is), checked against
lm-evaluation-harness's ``hf`` model on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _required, embedded_gguf_path, free_port, require_hf, stop, wait_until_serving
from test_hf import PAIRS as HF_PAIRS

pytestmark = pytest.mark.slow

PAIRS = [pair for pair in HF_PAIRS if pair[0]]  # the transformers backend's pairs, but the empty context
QUESTIONS = [
    ("The sky on a clear day is", [" green", " blue", " red"]),
    ("The capital of France is", [" Paris", " Rome", " Berlin"]),
    ("Snow is", [" hot", " black", " white"]),
    ("The largest ocean is the", [" Atlantic", " Indian", " Pacific"]),
    ("A dog says", [" meow", " woof", " moo"]),
]

SUITE = """
import json
import os
from pathlib import Path

PAIRS = json.loads(os.environ["PAIRS"])
QUESTIONS = json.loads(os.environ["QUESTIONS"])


def test_scores(model):
    out = {
        "loglikelihood": [model.loglikelihood(c, x) for c, x in PAIRS],
        "greedy": [model.score(c, [x])[0].is_greedy for c, x in PAIRS],
        "choose": [model.choose(q, options) for q, options in QUESTIONS],
        "score": [[r.logprob for r in model.score(q, options)] for q, options in QUESTIONS],
    }
    Path(os.environ["OUT"]).write_text(json.dumps(out))
"""


@pytest.fixture(scope="module")
def model_folder() -> Path:
    require_hf()  # the copy is written through transformers; the test server runs it with torch
    from pytest_evals.backends.gguf_copies import dequantized_copy

    return dequantized_copy(embedded_gguf_path())


@pytest.fixture(scope="module")
def logprob_server(model_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """tests/logprob_server.py on a free loopback port, serving the embedded default's weights as ``smol``."""
    _required("uvicorn", "pip install 'llama-cpp-python[server]'")
    port = free_port()
    log = tmp_path_factory.mktemp("logprob") / "server.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "logprob_server.py"), str(port),
                                 str(model_folder), "smol"], stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(proc, url, log, "logprob server", timeout_s=300)
        yield url
    finally:
        stop(proc)


def test_the_test_server_echoes_aligned_prompt_logprobs(logprob_server: str) -> None:
    """What the backend relies on: one token per entry, the first without a logprob, offsets into the
    prompt, and the top alternative at each position predicting that position's token."""
    import httpx

    from pytest_evals.backends.openai_echo import ALIGNMENT_PROBE, echo_is_shifted, echo_payload

    body = httpx.post(f"{logprob_server}/completions", json=echo_payload("smol", ALIGNMENT_PROBE), timeout=120).json()
    logprobs = body["choices"][0]["logprobs"]
    tokens, values, offsets = logprobs["tokens"], logprobs["token_logprobs"], logprobs["text_offset"]
    assert len(tokens) == len(values) == len(offsets) == len(logprobs["top_logprobs"])
    assert values[0] is None and all(v < 0 for v in values[1:])
    assert "".join(tokens[:-1]) == ALIGNMENT_PROBE and offsets[-1] == len(ALIGNMENT_PROBE)  # then the generated one
    assert all(ALIGNMENT_PROBE.startswith(t, o) for t, o in zip(tokens[:-1], offsets))
    assert not echo_is_shifted(tokens, logprobs["top_logprobs"])
    alone = httpx.post(f"{logprob_server}/completions", json={**echo_payload("smol", ALIGNMENT_PROBE), "max_tokens": 0},
                       timeout=120).json()["choices"][0]["logprobs"]  # the prompt only
    assert alone["tokens"] == tokens[:-1] and alone["text_offset"] == offsets[:-1]
    assert alone["token_logprobs"] == pytest.approx(values[:-1], abs=1e-5)


def test_loglikelihood_and_choose_over_http_agree_with_lm_evaluation_harness(
        logprob_server: str, model_folder: Path, tmp_path: Path) -> None:
    _required("lm_eval", "pip install lm-eval")
    # the plugin's side in its own process: no pytester here (torch is imported below, lm-eval's run too)
    (tmp_path / "test_http_scores.py").write_text(SUITE)
    out = tmp_path / "scores.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST") and k != "OPENAI_API_KEY"}
    env.update(PAIRS=json.dumps(PAIRS), QUESTIONS=json.dumps(QUESTIONS), OUT=str(out))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_http_scores.py",
                          f"--model=openai:smol@{logprob_server}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    ours = json.loads(out.read_text())

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    reference = HFLM(pretrained=str(model_folder), batch_size=4, device="cpu", dtype="float32")
    asked = list(PAIRS) + [(q, option) for q, options in QUESTIONS for option in options]
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(asked)]
    expected = reference.loglikelihood(instances, disable_tqdm=True)

    for pair, (logprob, greedy), value, our_greedy in zip(PAIRS, expected, ours["loglikelihood"], ours["greedy"]):
        assert abs(value - logprob) <= 1e-4, (pair, value, logprob)
        assert our_greedy == greedy, pair
    assert any(ours["greedy"]) and not all(ours["greedy"])  # both answers are checked
    rest = iter(expected[len(PAIRS):])
    choices = []
    for (question, options), scores, chosen in zip(QUESTIONS, ours["score"], ours["choose"]):
        theirs = [next(rest)[0] for _ in options]
        assert scores == pytest.approx(theirs, abs=1e-4), question
        best = max(range(len(options)), key=theirs.__getitem__)
        assert chosen == best, question
        choices.append(best)
    assert len(set(choices)) > 1  # the answers are not all in one place

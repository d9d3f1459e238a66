"""The transformers backend on the embedded default model (real weights, CPU)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Literal

import pytest
from conftest import require, require_hf

from pytest_evals.backends.base import ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.backends.gguf_copies import COMPLETE_MARK, copy_dir_for, dequantized_copy

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Q: What is 2 + 2?\nA:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def add(a, b):\n   ",
]

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is ", "London"),  # trailing whitespace moves to the continuation
    ("Question: 2+2=?\nAnswer:", " 4"),
    ("Q: color of the sky?\nA: ", "blue sky"),
    ("Hello", " world, how are you today?"),
    ("", "Hello there"),  # empty context: scored after the BOS token
    ("A long context " * 20, " ends here."),
]


def test_generate_reply_has_tokens_and_timings(smollm2) -> None:
    (reply,) = smollm2.generate([GenerateRequest("The capital of France is", max_tokens=6)])
    assert "Paris" in reply.text
    assert reply.prompt_tokens == len(smollm2.encode("The capital of France is"))
    assert 1 <= reply.completion_tokens <= 6
    assert 0 < reply.ttft_s <= reply.latency_s
    assert reply.tpot_s is None or reply.tpot_s > 0
    assert reply.backend == "smollm2"


def test_stop_strings_cut_the_reply(smollm2) -> None:
    (reply,) = smollm2.generate([GenerateRequest("1, 2, 3, 4,", max_tokens=12, stop=(" 7",))])
    assert " 7" not in reply.text and reply.finish_reason == "stop"
    assert reply.text.startswith(" 5, 6")


def test_batched_generation_equals_one_at_a_time(smollm2) -> None:
    """Left padding must not change greedy outputs of a decoder-only model."""
    requests = [GenerateRequest(p, max_tokens=10) for p in PROMPTS]
    batched = [r.text for r in smollm2.generate(requests)]
    single = [smollm2.generate([r])[0].text for r in requests]
    assert batched == single
    assert len(set(batched)) == len(batched)


def test_each_reply_of_a_batch_keeps_its_own_timings(smollm2) -> None:
    """A short generation in a batch ends at its own last token, not when the longest one does."""
    requests = [GenerateRequest("1, 2, 3, 4,", max_tokens=n) for n in (2, 8, 24)]
    replies = smollm2.generate(requests)
    assert [r.completion_tokens for r in replies] == [2, 8, 24]
    latencies = [r.latency_s for r in replies]
    assert latencies == sorted(latencies) and latencies[0] < latencies[2]
    assert len({r.ttft_s for r in replies}) == 1  # one prefill: the same first token time for all
    for reply in replies[1:]:
        assert reply.tpot_s == pytest.approx((reply.latency_s - reply.ttft_s) / (reply.completion_tokens - 1))
    scored = smollm2.loglikelihood([LoglikelihoodRequest(c, x) for c, x in PAIRS])
    assert all(r.latency_s is not None and r.latency_s > 0 for r in scored)


def test_a_batched_suite_stores_each_calls_own_latency_beside_the_batchs(pytester: pytest.Pytester) -> None:
    require_hf()
    pytester.makepyfile(test_lengths="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
        def test_count(model, n):
            assert model.generate("1, 2, 3, 4,", max_tokens=n).text
        """)
    result = pytester.runpytest_subprocess("--model=smollm2", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines(["latency: each call's own time, batched ones too (6 calls)*"])
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    calls = con.execute("SELECT output_tokens, latency_s, batch_s, batched FROM calls ORDER BY output_tokens").fetchall()
    con.close()
    assert [c[0] for c in calls] == [1, 2, 4, 8, 16, 32] and all(c[3] == 1 for c in calls)
    assert len({c[2] for c in calls}) == 1  # one batch served them all
    latencies = [c[1] for c in calls]
    assert latencies == sorted(latencies) and latencies[0] < latencies[-1] <= calls[0][2]


def test_chat_applies_the_chat_template(smollm2) -> None:
    (reply,) = smollm2.chat([ChatRequest(({"role": "user", "content": "What is the capital of France?"},),
                                         max_tokens=16)])
    assert "Paris" in reply.text
    template = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    assert reply.prompt_tokens == len(smollm2.encode(template))


def test_loglikelihood_batched_matches_single(smollm2) -> None:
    requests = [LoglikelihoodRequest(c, x) for c, x in PAIRS]
    batched = smollm2.loglikelihood(requests)
    for request, result in zip(requests, batched):
        (alone,) = smollm2.loglikelihood([request])
        assert abs(alone.logprob - result.logprob) < 1e-4
        assert result.logprob < 0
    assert batched[0].is_greedy is True  # " Paris" is the model's own next token


def test_loglikelihood_agrees_with_lm_evaluation_harness(smollm2) -> None:
    """The reference: lm-evaluation-harness's hf backend on the same model files and strings."""
    require("lm_eval", "pip install lm-eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    reference = HFLM(pretrained=smollm2.source, batch_size=4, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    expected = reference.loglikelihood(instances, disable_tqdm=True)
    ours = smollm2.loglikelihood([LoglikelihoodRequest(c, x) for c, x in PAIRS])
    for pair, (logprob, greedy), result in zip(PAIRS, expected, ours):
        assert abs(result.logprob - logprob) <= 1e-4, pair
        assert result.is_greedy == greedy, pair


def test_loglikelihood_computes_only_the_logits_it_reads(smollm2) -> None:
    """A batch's output layer sees only the positions some continuation is read from (the peak is not
    rows x width x vocabulary), and the scores equal log-softmax over the whole sequence's logits."""
    import torch

    pairs = [("A long context " * 20, " ends here."), ("Short", " one"), ("Short", " two"), ("Short", ""),
             ("Mid " * 5, " x y")]
    seen: list[int] = []
    hook = smollm2.model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
    try:
        ours = smollm2.loglikelihood([LoglikelihoodRequest(c, x) for c, x in pairs])
    finally:
        hook.remove()
    encoded = [smollm2.encode_pair(c, x) for c, x in pairs]
    width = max(len(c) + len(x) - 1 for c, x in encoded)
    assert seen and max(seen) < width // 4, (seen, width)
    for (ctx, cont), result in zip(encoded, ours):
        if not cont:
            assert result.logprob == 0.0 and result.is_greedy
            continue
        with torch.inference_mode():
            full = torch.log_softmax(smollm2.model(torch.tensor([ctx + cont[:-1]])).logits[0], dim=-1)
        expected = float(sum(full[len(ctx) - 1 + k, token] for k, token in enumerate(cont)))
        assert abs(result.logprob - expected) < 1e-4


def test_loglikelihood_past_the_models_length_scores_the_last_tokens(smollm2, monkeypatch) -> None:
    """A request longer than the model takes keeps its last max_length + 1 tokens (lm-evaluation-harness's
    rule): the continuation is scored after the context's tail, and one longer than that window by its
    own last tokens."""
    import torch

    monkeypatch.setattr(type(smollm2), "max_length", property(lambda self: 6))
    pairs = [("A long context " * 5, " ends here."), ("Short", " and then a very long continuation goes on")]
    ours = smollm2.loglikelihood([LoglikelihoodRequest(c, x) for c, x in pairs])
    for (context, continuation), result in zip(pairs, ours):
        ctx, cont = smollm2.encode_pair(context, continuation)
        window = (ctx + cont)[-7:]
        scored = cont[-6:]  # what the window reads: at most its six predicted positions
        with torch.inference_mode():
            full = torch.log_softmax(smollm2.model(torch.tensor([window[:-1]])).logits[0], dim=-1)
        expected = float(sum(full[6 - len(scored) + k, token] for k, token in enumerate(scored)))
        assert abs(result.logprob - expected) < 1e-4, (context, continuation)


def test_gguf_copy_is_cached_and_reused(smollm2) -> None:
    from pytest_evals.backends.gguf_copies import embedded_gguf

    gguf = embedded_gguf()
    folder = copy_dir_for(gguf)
    assert (folder / COMPLETE_MARK).exists() and (folder / "config.json").exists()
    assert dequantized_copy(gguf) == folder  # second call: no conversion
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_the_same_gguf_in_two_places_shares_one_copy(smollm2, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is keyed by the file's content: another environment's file of the same bytes reuses it."""
    import shutil

    from pytest_evals.backends.gguf_copies import embedded_gguf

    gguf = embedded_gguf()
    elsewhere = tmp_path / "other-env" / gguf.name
    elsewhere.parent.mkdir()
    shutil.copyfile(gguf, elsewhere)
    assert copy_dir_for(elsewhere) == copy_dir_for(gguf)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert dequantized_copy(elsewhere) == copy_dir_for(gguf)
    with open(elsewhere, "r+b") as handle:  # other bytes, another copy
        handle.seek(1 << 20)
        handle.write(b"\x00" * 16)
    assert copy_dir_for(elsewhere) != copy_dir_for(gguf)


def test_example_suites_on_the_embedded_default(pytester: pytest.Pytester, request) -> None:
    require_hf()
    suites = request.config.rootpath / "example_suites"
    result = pytester.runpytest_subprocess(str(suites), "-n", "2", "-k", "arith-001 or arith-002 or mc-001 or mc-002",
                                           "-p", "no:cacheprovider", f"--evals-db={pytester.path / 'e.sqlite'}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 4, result.stdout.str()
    result.stdout.fnmatch_lines(["*evals summary*", "*test_arithmetic.py::test_arithmetic*smollm2*2*"])
    result.stdout.fnmatch_lines(["*evals summary*", "*test_multiple_choice.py::test_multiple_choice*smollm2*2*"])
    con = sqlite3.connect(pytester.path / "e.sqlite")
    rows = con.execute("SELECT c.model, c.outcome, k.kind, k.input_tokens, k.latency_s FROM cases c "
                       "JOIN calls k ON k.case_id = c.id").fetchall()
    assert len(rows) == 4
    assert {r[0] for r in rows} == {"smollm2"} and {r[1] for r in rows} <= {"passed", "failed"}
    assert sorted(r[2] for r in rows) == ["choose", "choose", "generate", "generate"]
    assert all(r[3] > 0 and r[4] > 0 for r in rows)


def test_hf_gguf_spec_uses_the_same_cached_copy(pytester: pytest.Pytester) -> None:
    require_hf()
    from pytest_evals.backends.gguf_copies import embedded_gguf

    gguf = embedded_gguf()
    pytester.makepyfile(
        """
        def test_gguf(model):
            assert model.spec.startswith("hf:")
            assert "Paris" in model.generate("The capital of France is", max_tokens=5).text
        """
    )
    result = pytester.runpytest_subprocess(f"--model=hf:{gguf}", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_gguf[[]hf:*SmolLM2-135M-Instruct.Q4_1.gguf[]] PASSED*"])


def test_hub_id_loads_offline_from_the_hugging_face_cache(pytester: pytest.Pytester, smollm2, tmp_path) -> None:
    """hf:ORG/NAME reads the local hub cache only; an id that is not cached is a usage error."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--Example--Smol" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for item in Path(smollm2.source).iterdir():
        if not item.name.startswith("."):
            (snapshot / item.name).symlink_to(item)
    (cache / "models--Example--Smol" / "refs").mkdir()
    (cache / "models--Example--Smol" / "refs" / "main").write_text("0123abcd")
    pytester.makepyfile(
        """
        def test_capital(model):
            assert "Paris" in model.generate("The capital of France is", max_tokens=5).text
        """
    )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        result = pytester.runpytest_subprocess("--model=hf:Example/Smol", "-v")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*test_capital[[]hf:Example/Smol[]] PASSED*"])
        result = pytester.runpytest_subprocess("--model=hf:Example/NotCached")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["ERROR: --model hf:Example/NotCached: Example/NotCached is not in the local "
                                     "Hugging Face cache*`hf download Example/NotCached`*"])


def test_choices_that_share_an_input_share_a_pass_and_score_as_alone(smollm2) -> None:
    requests = [LoglikelihoodRequest("Question: What is the capital of France?\nAnswer:", f" {c}")
                for c in ("Paris", "Rome", "Berlin", "a city in the north of Europe")]
    together = smollm2.loglikelihood(requests)
    for request, shared in zip(requests, together):
        (alone,) = smollm2.loglikelihood([request])
        assert abs(alone.logprob - shared.logprob) < 1e-4 and alone.is_greedy == shared.is_greedy


@pytest.mark.parametrize("runner", ["_greedy_batch", "_generate_batch"])
def test_a_batch_out_of_memory_is_run_in_halves(smollm2, monkeypatch: pytest.MonkeyPatch, runner: str) -> None:
    """Greedy decoding over the shared prefix and transformers' generate (the plain path, for models the
    prefix cache cannot serve) both halve a batch that runs out of memory."""
    if runner == "_generate_batch":
        monkeypatch.setattr(smollm2, "prefix", None)
    requests = [GenerateRequest(f"{n} + {n} =", max_tokens=4) for n in range(1, 6)]
    expected = [r.text for r in smollm2.generate(requests)]
    real, sizes = getattr(smollm2, runner), []

    def small_memory(items):
        sizes.append(len(items))
        if len(items) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(items)

    monkeypatch.setattr(smollm2, runner, small_memory)
    assert [r.text for r in smollm2.generate(requests)] == expected
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)


# --- the generation deadline, sampling, hf: options, the weights in the case key -----------------------

def test_the_generation_deadline_stops_generating_and_is_a_timeout(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """--evals-timeout is transformers' max_time on the plain path: generation stops at the deadline (not
    at its token limit or an end token), and the call is a transient `timeout` fault."""
    from dataclasses import replace

    from pytest_evals.backends.base import TransientError

    seen = []
    real = smollm2.model.generate

    def generate(**kwargs):
        output = real(**kwargs)
        seen.append((kwargs, output[0, kwargs["input_ids"].shape[1]:].tolist()))
        return output

    monkeypatch.setattr(smollm2, "prefix", None)  # transformers' generate (models the prefix cache cannot serve)
    monkeypatch.setattr(smollm2.model, "generate", generate)
    monkeypatch.setattr(smollm2, "settings", replace(smollm2.settings, timeout_s=0.05))
    with pytest.raises(TransientError, match="generation passed the 0.05 s deadline") as caught:
        smollm2.generate([GenerateRequest("1, 2, 3, 4,", max_tokens=200)])
    assert caught.value.kind == "timeout"
    ((kwargs, new),) = seen
    assert kwargs["max_time"] == 0.05
    assert 1 <= len(new) < 200 and new[-1] != smollm2.tokenizer.eos_token_id


def test_greedy_decoding_stops_at_the_deadline_and_is_a_timeout(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy decoding over the shared prefix checks the deadline at every token: it stops there (far
    before its 200-token limit) as a transient `timeout` fault."""
    from dataclasses import replace

    from pytest_evals.backends.base import TransientError

    passes = []
    hook = smollm2.model.register_forward_hook(lambda *_: passes.append(1))
    monkeypatch.setattr(smollm2, "settings", replace(smollm2.settings, timeout_s=0.05))
    try:
        with pytest.raises(TransientError, match="generation passed the 0.05 s deadline") as caught:
            smollm2.generate([GenerateRequest("1, 2, 3, 4,", max_tokens=200)])
    finally:
        hook.remove()
    assert caught.value.kind == "timeout"
    assert 1 <= len(passes) < 200  # the prefill and the tokens before the deadline, not the 200 tokens


def test_a_call_past_the_evals_timeout_ends_its_case_as_error(pytester: pytest.Pytester, smollm2) -> None:
    pytester.makepyfile(test_slow="""
        def test_long_story(model):
            assert model.generate("1, 2, 3, 4,", max_tokens=200).text
        """)
    result = pytester.runpytest_subprocess(f"--model=hf:{smollm2.source}", "--evals-timeout=0.05",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
    cases = con.execute("SELECT outcome, error FROM cases").fetchall()
    calls = con.execute("SELECT error FROM calls").fetchall()
    con.close()
    assert [c[0] for c in cases] == ["error"] and "generation passed the 0.05 s deadline" in cases[0][1]
    assert len(calls) == 1 and "deadline" in calls[0][0]  # tried once: timeouts are retried only when asked


def test_sampling_uses_each_requests_temperature_and_torchs_generator(smollm2) -> None:
    """Greedy and sampled requests in one call keep their own temperature; samples are drawn from torch's
    global generator (hf.py sets no seed): two calls draw different samples, the same torch seed the same."""
    import torch

    prompt = "Once upon a time"
    (greedy,) = [r.text for r in smollm2.generate([GenerateRequest(prompt, max_tokens=12)])]
    requests = [GenerateRequest(prompt, max_tokens=12), GenerateRequest(prompt, max_tokens=12, temperature=1e-3),
                *[GenerateRequest(prompt, max_tokens=12, temperature=1.5)] * 4]
    first, second = ([r.text for r in smollm2.generate(requests)] for _ in range(2))
    assert first[0] == second[0] == greedy  # temperature 0 is greedy, in a call with sampled requests
    assert first[1] == second[1] == greedy  # a temperature near 0 samples (almost surely) the greedy answer
    hot = first[2:] + second[2:]
    assert len(set(hot)) > 1 and first[2:] != second[2:]
    assert any(text != greedy for text in hot)
    torch.manual_seed(1234)
    seeded = [r.text for r in smollm2.generate(requests[2:])]
    torch.manual_seed(1234)
    assert [r.text for r in smollm2.generate(requests[2:])] == seeded


@pytest.mark.parametrize("options, message", [
    ("?bogus=1", "unknown option bogus; hf: specs take dtype, device, batch_size"),
    ("?dtype=float13", "dtype=float13 is not one of auto, float32, float16, bfloat16"),
    ("?batch_size=0", "batch_size=0 must be a whole number >= 1"),
])
def test_hf_options_are_checked_at_start_up(pytester: pytest.Pytester, tmp_path: Path, options: str,
                                             message: str) -> None:
    from conftest import _required

    from pytest_evals.backends.hf_load import HF_PACKAGES

    for package in HF_PACKAGES:
        _required(package, "pip install -e '.[hf]'")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # never loaded: the spec is refused first
    pytester.makepyfile(test_suite="""
        def test_x(model):
            assert model.generate("x").text
        """)
    result = pytester.runpytest(f"--model=hf:{folder}{options}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --model hf:{folder}{options}: {message}"])
    assert len([line for line in result.stderr.lines if line.strip()]) == 1
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def _weights_folder(root: Path, config: Path) -> Path:
    folder = root / "weights"
    folder.mkdir()
    (folder / "config.json").write_bytes(config.read_bytes())
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * (3 << 12))  # 3 MiB
    return folder


def _flip_first_byte(weights: Path) -> None:
    with open(weights, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))


def test_the_weights_of_an_hf_folder_enter_the_case_key(pytester: pytest.Pytester, smollm2) -> None:
    """Other bytes in the weights file (same name, same size): another case key; the same bytes again: the
    first key. The folder's weights are not a model, so each case ends as an error, which keeps its key."""
    folder = _weights_folder(pytester.path, Path(smollm2.source) / "config.json")
    pytester.makepyfile(test_keyed="""
        def test_keyed(model):
            pass
        """)

    def key() -> str:
        result = pytester.runpytest_subprocess(f"--model=hf:{folder}", "-p", "no:cacheprovider")
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
        con = sqlite3.connect(pytester.path / ".evals" / "evals.sqlite")
        (found,) = con.execute("SELECT case_key FROM cases WHERE run_id = (SELECT max(id) FROM runs)").fetchall()
        con.close()
        return found[0]

    first = key()
    _flip_first_byte(folder / "model.safetensors")
    changed = key()
    _flip_first_byte(folder / "model.safetensors")
    assert first.startswith("v1:") and changed != first
    assert key() == first


def test_the_weights_of_a_vllm_folder_enter_the_model_identity(tmp_path: Path, smollm2) -> None:
    """vllm:/dir has the same fingerprint as hf:/dir (its transport options stay out of the key); a hub id
    vLLM fetches itself has none, and its spec alone identifies it."""
    from pytest_evals.backends.registry import BackendRegistry
    from pytest_evals.backends.specs import parse_spec
    from pytest_evals.backends.vllm import VLLMBackend
    from pytest_evals.calls.pool import BackendPool

    folder = _weights_folder(tmp_path, Path(smollm2.source) / "config.json")
    spec = parse_spec(f"vllm:{folder}?tensor_parallel_size=2")

    def identity(raw: str = spec.raw) -> str:  # a new pool each time: a pool asks once per spec
        return BackendPool(BackendRegistry(), smollm2.settings).identity(parse_spec(raw))

    first = identity()
    assert identity(f"vllm:{folder}?tensor_parallel_size=4") == first
    assert VLLMBackend.fingerprint(spec) is not None
    _flip_first_byte(folder / "model.safetensors")
    assert identity() != first
    _flip_first_byte(folder / "model.safetensors")
    assert identity() == first
    assert VLLMBackend.fingerprint(parse_spec("vllm:Example/NotInAnyCache")) is None


CHOICES = [("The capital of France is", [" Paris", " Rome", " Berlin"]),
           ('What is 12 plus 30? {"a": 12, "op": "', ['+"', '-"', '*"', '/"']),
           ("x", [" yes", " no"]),  # a short prefix beside long ones: left padding
           ('Convert 5 km to m. {"from_unit": ', ['"km"', '"m"', '"cm"', '"mi"', '"kg"', '"g"', '"lb"'])]


def test_choices_of_many_contexts_in_one_batch_score_as_loglikelihood_does(smollm2) -> None:
    chunk = []
    for n, (context, options) in enumerate(CHOICES):
        pairs = [smollm2.encode_pair(context, o) for o in options]
        chunk.append((n, pairs[0][0], [rest for _, rest in pairs]))
    batched = smollm2._score_after_shared_prefixes(chunk)
    for (context, options), scores in zip(CHOICES, batched):
        alone = [r.logprob for r in smollm2.loglikelihood([LoglikelihoodRequest(context, o) for o in options])]
        assert max(abs(a - b) for a, b in zip(alone, scores)) < 1e-4, (context, alone, scores)
    assert smollm2._choose_many(CHOICES) == [smollm2._choose(c, o) for c, o in CHOICES]


def test_forced_calls_of_a_batch_are_written_side_by_side_as_each_alone(smollm2, monkeypatch) -> None:
    from pytest_evals.tools import tool

    def calculate(a: float, op: Literal["+", "-", "*", "/"], b: float) -> float:
        """Do one arithmetic operation.

        Args:
            a: The left operand.
            op: The operation.
            b: The right operand.
        """
        return 0.0

    def capital_of(country: str) -> str:
        """Look up the capital city of a country."""
        return ""

    schemas = (tool(calculate).schema, tool(capital_of).schema)
    questions = ["What is 12 plus 30?", "What is 7 times 8?", "What is the capital of Peru?", "What is 9 minus 4?"]
    requests = [ChatRequest(({"role": "user", "content": q},), 32, 0.0, schemas, "required") for q in questions]
    sizes: list[tuple[str, int]] = []
    complete, choose = smollm2._complete_texts, smollm2._choose_many
    monkeypatch.setattr(smollm2, "_complete_texts", lambda items: sizes.append(("complete", len(items))) or complete(items))
    monkeypatch.setattr(smollm2, "_choose_many", lambda items: sizes.append(("choose", len(items))) or choose(items))
    together = smollm2.chat(requests)
    assert sizes[0] == ("choose", 4)  # every call's tool chosen in one batch
    assert max(n for _, n in sizes) == 4 and len(sizes) <= 6  # each later step of all calls in one batch
    alone = [smollm2.chat([r])[0] for r in requests]
    assert [(c.tool_calls[0].name, c.tool_calls[0].arguments) for c in together] == \
        [(c.tool_calls[0].name, c.tool_calls[0].arguments) for c in alone]
    assert all(r.latency_s and r.prompt_tokens and r.completion_tokens for r in together)


TURNS_SUITE = '''
import re
from typing import Literal

import pytest

def calculate(a: float, op: Literal["+", "-", "*", "/"], b: float) -> float:
    """Do one arithmetic operation.

    Args:
        a: The left operand.
        op: The operation.
        b: The right operand.
    """
    with open("tools.log", "a") as log:
        log.write(f"{a} {op} {b}\\n")
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("n", range(4))
def test_dialogue(model, n):
    chat = model.conversation(system="Answer in one short sentence.", max_tokens=12)
    chat.say(f"My favourite number is {n + 3}. Remember it.")
    chat.say("What is my favourite number?")

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("q", ["What is 12 plus 30?", "What is 7 times 8?", "What is 100 minus 37?"])
def test_tools(model, q):
    chat = model.conversation(tools=[calculate], tool_choice="required", max_tokens=16, max_rounds=1)
    chat.say(q)
'''


def test_batched_turns_and_tool_rounds_record_what_one_at_a_time_records(pytester: pytest.Pytester) -> None:
    """Temperature 0 on the embedded default: every turn, tool round and forced call batched across the
    cases gives the texts and outcomes of --evals-batch-size 1 (padding may only move near-ties)."""
    require_hf()
    pytester.makepyfile(test_turns=TURNS_SUITE)
    runs = {}
    for name, extra in (("batched", []), ("alone", ["--evals-batch-size", "1"])):
        (pytester.path / "tools.log").unlink(missing_ok=True)
        result = pytester.runpytest_subprocess("--model=smollm2", "-p", "no:cacheprovider",
                                               "--evals-db", f"{name}.sqlite", *extra)
        assert result.ret == 0, result.stdout.str()[-2000:]
        con = sqlite3.connect(pytester.path / f"{name}.sqlite")
        runs[name] = (
            con.execute("SELECT cases.nodeid, cases.outcome, turns.position, turns.role, turns.content, "
                        "turns.tool_calls FROM turns JOIN cases ON cases.id = turns.case_id "
                        "ORDER BY cases.nodeid, turns.position").fetchall(),
            con.execute("SELECT count(*), total(batched) FROM calls").fetchone(),
            sorted((pytester.path / "tools.log").read_text().splitlines()),
        )
        con.close()
    (batched_turns, (calls, batched_calls), batched_tools), (alone_turns, (alone_calls, alone_batched), alone_tools) = \
        runs["batched"], runs["alone"]
    strip_ids = lambda turns: [t[:5] + (json.loads(t[5])[0]["function"] if t[5] else None,) for t in turns]  # noqa: E731
    assert strip_ids(batched_turns) == strip_ids(alone_turns)
    assert batched_tools == alone_tools and len(batched_tools) == 3  # each tool ran once per call the model made
    assert calls == alone_calls == 4 * 2 + 3 * 2 and batched_calls == calls and alone_batched == 0

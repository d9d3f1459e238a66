"""The transformers backend on the embedded default model (real weights, CPU)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_evals.backends.base import ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.backends.gguf_cache import COMPLETE_MARK, copy_dir_for, dequantized_copy

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
    pytest.importorskip("lm_eval", reason="pip install lm-eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    reference = HFLM(pretrained=smollm2.source, batch_size=4, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    expected = reference.loglikelihood(instances, disable_tqdm=True)
    ours = smollm2.loglikelihood([LoglikelihoodRequest(c, x) for c, x in PAIRS])
    for pair, (logprob, greedy), result in zip(PAIRS, expected, ours):
        assert abs(result.logprob - logprob) <= 1e-4, pair
        assert result.is_greedy == greedy, pair


def test_gguf_copy_is_cached_and_reused(smollm2) -> None:
    from pytest_evals.backends.gguf_cache import embedded_gguf

    gguf = embedded_gguf()
    folder = copy_dir_for(gguf)
    assert (folder / COMPLETE_MARK).exists() and (folder / "config.json").exists()
    assert dequantized_copy(gguf) == folder  # second call: no conversion
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_the_same_gguf_in_two_places_shares_one_copy(smollm2, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is keyed by the file's content: another environment's file of the same bytes reuses it."""
    import shutil

    from pytest_evals.backends.gguf_cache import embedded_gguf

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
    from pytest_evals.backends.gguf_cache import embedded_gguf

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


def test_a_batch_out_of_memory_is_run_in_halves(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [GenerateRequest(f"{n} + {n} =", max_tokens=4) for n in range(1, 6)]
    expected = [r.text for r in smollm2.generate(requests)]
    real, sizes = smollm2._generate_batch, []

    def small_memory(items):
        sizes.append(len(items))
        if len(items) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(items)

    monkeypatch.setattr(smollm2, "_generate_batch", small_memory)
    assert [r.text for r in smollm2.generate(requests)] == expected
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)

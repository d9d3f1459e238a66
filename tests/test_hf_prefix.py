"""Greedy decoding and choices over the prompts' shared prefix (hf_prefix.py), on the embedded default:
what they write and score equals transformers' own generate and loglikelihood, and the tokens they skip
are really skipped (the model is fed fewer tokens)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
from conftest import require_hf

from pytest_evals.backends.base import ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.backends.hf_prefix import SharedPrefix, shared_length

SYSTEM = ("You are a careful assistant. Answer in one short sentence, and never add anything the user did "
          "not ask for. ") * 3
QUESTIONS = ["What is 2 + 3?", "Name the capital of France.", "Say hello in Spanish.",
             "What colour is the sky on a clear day?", "Count to five.", "Who wrote Hamlet?"]


def chat_prompts(smollm2, turns: list[list[str]]) -> list[str]:
    return [smollm2.chat_prompt(ChatRequest(({"role": "system", "content": SYSTEM},
                                             *[{"role": "user" if k % 2 == 0 else "assistant", "content": t}
                                               for k, t in enumerate(dialogue)]))) for dialogue in turns]


@contextlib.contextmanager
def fed_tokens(smollm2) -> Iterator[list[int]]:
    """How many tokens each forward pass of the model is given (padding included)."""
    fed: list[int] = []
    hook = smollm2.model.register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append(int((args[0] if args else kwargs["input_ids"]).numel())), with_kwargs=True)
    try:
        yield fed
    finally:
        hook.remove()


def plain(smollm2, monkeypatch: pytest.MonkeyPatch, requests: list[GenerateRequest]) -> list[tuple[str, int, str]]:
    """What transformers' generate writes for each request alone (the path of models without the cache)."""
    with monkeypatch.context() as m:
        m.setattr(smollm2, "prefix", None)
        return [(r.text, r.completion_tokens, r.finish_reason) for q in requests for r in smollm2.generate([q])]


def test_shared_length_keeps_one_token_of_each_row_its_own() -> None:
    assert shared_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_length([[1, 2, 3], [1, 2, 3]]) == 2  # equal rows: the last token still runs, for its logits
    assert shared_length([[7, 8, 9]]) == 2 and shared_length([[5], [6]]) == 0


def test_greedy_over_the_shared_prefix_writes_what_generate_writes(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of chat prompts that share a long system prompt: the same texts, token counts and finish
    reasons as transformers' generate gives each alone (own limits and stop strings included), while
    the shared prefix is fed to the model once, not once per row."""
    prompts = chat_prompts(smollm2, [[q] for q in QUESTIONS])
    requests = [GenerateRequest(p, max_tokens=6 + 4 * n, stop=("Paris",) if n == 1 else ()) for n, p in enumerate(prompts)]
    smollm2.prefix.forget()
    with fed_tokens(smollm2) as fed:
        together = smollm2.generate(requests)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == plain(smollm2, monkeypatch, requests)
    lengths = [len(smollm2.encode(p)) for p in prompts]
    shared = shared_length([smollm2.encode(p) for p in prompts])
    assert shared > 40  # the system prompt's tokens
    assert fed[0] == shared and fed[1] <= len(prompts) * (max(lengths) - shared)  # the prefix once, then each row's own
    assert [r.prompt_tokens for r in together] == lengths


def test_a_batch_that_continues_the_last_ones_rows_runs_only_their_new_tokens(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation's next turn: each prompt continues a prompt of the last batch (here in another
    order, one of them left out), so only the new tokens are fed, and each row sees its own earlier turn
    only: the replies equal generate's."""
    first = chat_prompts(smollm2, [[q] for q in QUESTIONS])
    smollm2.prefix.forget()
    replies = [r.text for r in smollm2.generate([GenerateRequest(p, max_tokens=8) for p in first])]
    order = [4, 0, 3, 1, 2]  # question 5 does not go on
    second = chat_prompts(smollm2, [[QUESTIONS[n], replies[n], "Now say it again in French."] for n in order])
    requests = [GenerateRequest(p, max_tokens=10) for p in second]
    with fed_tokens(smollm2) as fed:
        together = smollm2.generate(requests)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == plain(smollm2, monkeypatch, requests)
    old = [len(smollm2.encode(first[n])) for n in order]
    new = [len(smollm2.encode(p)) for p in second]
    assert fed[0] <= len(order) * max(n - o + 2 for n, o in zip(new, old))  # about each turn's new tokens, padded


def test_a_row_that_shares_only_part_of_a_row_of_the_last_batch_sees_only_that_part(smollm2, monkeypatch) -> None:
    """The user rewrites the question: the new prompts share the last batch's rows up to the question
    only, so the rest of each old row (its old question) must be hidden from the new row."""
    first = chat_prompts(smollm2, [[q + " Answer in English."] for q in QUESTIONS[:4]])
    smollm2.prefix.forget()
    smollm2.generate([GenerateRequest(p, max_tokens=2) for p in first])
    second = chat_prompts(smollm2, [[q + " Answer in French, please."] for q in QUESTIONS[:4]])
    requests = [GenerateRequest(p, max_tokens=10) for p in second]
    with fed_tokens(smollm2) as fed:
        together = smollm2.generate(requests)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == plain(smollm2, monkeypatch, requests)
    assert fed[0] < 4 * 16  # from the rewritten part on: the system prompt and the question came from the cache


def test_choices_over_the_shared_prefix_and_after_the_last_batch_score_as_loglikelihood(smollm2) -> None:
    """The options of each context run side by side in its row (a tree of continuations): scores within
    1e-4 of loglikelihood, first over a shared prefix, then for contexts that continue those rows."""
    contexts = [SYSTEM + f"Question: {q}\nAnswer with one word:" for q in QUESTIONS[:4]]
    options = [" yes", " no", " maybe not", " Paris"]
    smollm2.prefix.forget()
    for round_ in (contexts, [c + " I think the answer is" for c in reversed(contexts)]):
        chunk = []
        for n, context in enumerate(round_):
            pairs = [smollm2.encode_pair(context, o) for o in options]
            chunk.append((n, pairs[0][0], [rest for _, rest in pairs]))
        with fed_tokens(smollm2) as fed:
            scores = smollm2._score_after_shared_prefixes(chunk)
        if round_ is not contexts:  # the contexts' passes continue the first round's rows: their new words only
            assert fed[0] <= 4 * 8, fed
        for context, row in zip(round_, scores):
            expected = [r.logprob for r in smollm2.loglikelihood([LoglikelihoodRequest(context, o) for o in options])]
            assert row == pytest.approx(expected, abs=1e-4)


def test_choices_on_the_plain_path_score_as_loglikelihood(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model the prefix cache cannot serve: each context once, left-padded, its cache copied per option."""
    contexts = [SYSTEM + f"Question: {q}\nAnswer with one word:" for q in QUESTIONS[:3]]
    options = [" yes", " no", " maybe not"]
    chunk = []
    for n, context in enumerate(contexts):
        pairs = [smollm2.encode_pair(context, o) for o in options]
        chunk.append((n, pairs[0][0], [rest for _, rest in pairs]))
    with monkeypatch.context() as m:
        m.setattr(smollm2, "prefix", None)
        scores = smollm2._score_after_shared_prefixes(chunk)
    for context, row in zip(contexts, scores):
        expected = [r.logprob for r in smollm2.loglikelihood([LoglikelihoodRequest(context, o) for o in options])]
        assert row == pytest.approx(expected, abs=1e-4)


def test_a_chat_batch_equals_each_chat_alone_on_the_plain_path(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [ChatRequest(({"role": "system", "content": SYSTEM}, {"role": "user", "content": q}), max_tokens=12)
                for q in QUESTIONS]
    together = [r.text for r in smollm2.chat(requests)]
    with monkeypatch.context() as m:
        m.setattr(smollm2, "prefix", None)
        assert together == [smollm2.chat([r])[0].text for r in requests]


def test_models_the_prefix_cache_cannot_serve_keep_the_plain_path() -> None:
    """A sliding-window model or generation settings beyond greedy argmax (a repetition penalty) are not
    served by the prefix cache; a plain Llama is."""
    require_hf()  # the tiny models are torch modules (where the hf packages are missing: skip, or fail in CI)
    import transformers

    def tiny(config_class, **extra):
        config = config_class(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, **extra)
        return transformers.AutoModelForCausalLM.from_config(config)

    assert SharedPrefix.usable(tiny(transformers.LlamaConfig))
    assert not SharedPrefix.usable(tiny(transformers.MistralConfig, sliding_window=8))
    eager = transformers.AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1), attn_implementation="eager")
    assert not SharedPrefix.usable(eager)  # eager attention adds a boolean mask to the scores
    penalised = tiny(transformers.LlamaConfig)
    penalised.generation_config.repetition_penalty = 1.3
    assert not SharedPrefix.usable(penalised)


def test_a_rounds_chunks_continue_the_last_rounds_chunks(smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round larger than a batch runs as chunks; the next round's chunks continue rows of either of
    them (here mixed across them): each row runs only its new tokens, and writes what generate writes."""
    monkeypatch.setattr(smollm2, "batch_size", 3)
    monkeypatch.setattr(smollm2.prefix, "keep_rows", 12)
    first = chat_prompts(smollm2, [[q] for q in QUESTIONS])
    smollm2.prefix.forget()
    replies = [r.text for r in smollm2.generate([GenerateRequest(p, max_tokens=6) for p in first])]
    assert len(smollm2.prefix.batches) == 2  # the round's two chunks are kept
    order = [5, 0, 3, 1, 4, 2]  # each chunk of the next round continues rows of both chunks
    second = chat_prompts(smollm2, [[QUESTIONS[n], replies[n], "And in French?"] for n in order])
    requests = [GenerateRequest(p, max_tokens=8) for p in second]
    with fed_tokens(smollm2) as fed:
        together = smollm2.generate(requests)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == plain(smollm2, monkeypatch, requests)
    new_tokens = max(len(smollm2.encode(second[k])) - len(smollm2.encode(first[n])) for k, n in enumerate(order))
    prefills = [n for n in fed if n > 3]  # the decoding steps feed one token per row
    assert len(prefills) == 2 and all(n <= 3 * (new_tokens + 2) for n in prefills), (prefills, new_tokens)
    assert len(smollm2.prefix.batches) == 2  # the first round's chunks, every row continued, are spent

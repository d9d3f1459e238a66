"""The scoring side of the transformers backend: loglikelihood and multiple choice.

``loglikelihood`` reproduces lm-evaluation-harness's ``hf`` backend: context and continuation are
encoded together, the continuation's tokens are those past the context's, the context's trailing
whitespace moves to the continuation, and an empty context is replaced by the prefix (BOS) token.
Requests whose model input is the same token sequence share one forward pass. A question's choices
(``_choose_many``) run their context once, over the shared prefix where the model allows it
(``hf_prefix``), each option after its own context.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .base import Loglikelihood, LoglikelihoodRequest, Stopwatch, likeliest, split_whitespace
from .hf_load import LoadedModel


class HFScoring(LoadedModel):
    """Mixin of :class:`~pytest_evals.backends.hf.HFBackend`: scoring continuations."""

    def _choose(self, context: str, options: list[str]) -> int:
        return self._choose_many([(context, options)])[0]

    def _choose_many(self, items: list[tuple[str, list[str]]]) -> list[int]:
        """The likeliest option of each (context, options), as ``loglikelihood`` would score them: each
        context runs once and its KV cache serves all its options (a forced call's enum over a long tools
        prompt costs one pass over the prompt, not one per option), and the contexts of up to
        ``batch_size`` items run as one left-padded batch."""
        picks: list[int | None] = [None] * len(items)
        shared: list[tuple[int, list[int], list[list[int]]]] = []
        for n, (context, options) in enumerate(items):
            pairs = [self.encode_pair(context, o) for o in options]
            prefix = pairs[0][0]
            if len(options) == 1:
                picks[n] = 0
            elif any(c != prefix for c, _ in pairs) or not all(x for _, x in pairs):
                picks[n] = likeliest([r.logprob for r in self.loglikelihood(
                    [LoglikelihoodRequest(context, o) for o in options])])
            else:
                shared.append((n, prefix, [x for _, x in pairs]))
        for start in range(0, len(shared), self.batch_size):
            chunk = shared[start:start + self.batch_size]
            for (n, _, _), scores in zip(chunk, self._score_after_shared_prefixes(chunk)):
                picks[n] = likeliest(scores)
        return [p if p is not None else 0 for p in picks]

    def _score_after_shared_prefixes(self, chunk: list[tuple[int, list[int], list[list[int]]]]) -> list[list[float]]:
        torch = self.torch
        import torch.nn.functional as F

        if self.prefix is not None:  # the contexts' shared prefix once (and kept), each option after its context
            rows = self.prefix.prefill([prefix for _, prefix, _ in chunk])
            owner = [row for row, (_, _, rests) in enumerate(chunk) for _ in rests]
            options = [rest for _, _, rests in chunk for rest in rests]
            shared: list[list[float]] = [[] for _ in chunk]
            for row, rest, steps in zip(owner, options, self.prefix.continuations(rows, owner, options)):
                target = torch.tensor(rest, device=steps.device)
                shared[row].append(float(F.log_softmax(steps.float(), dim=-1).gather(-1, target[:, None]).sum()))
            return shared

        width = max(len(prefix) for _, prefix, _ in chunk)
        ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, prefix, _) in enumerate(chunk):  # left-padded: every prefix ends at the last column
            ids[row, width - len(prefix):] = torch.tensor(prefix, dtype=torch.long)
            mask[row, width - len(prefix):] = 1
        owner = [row for row, (_, _, rests) in enumerate(chunk) for _ in rests]
        rests = [rest for _, _, options in chunk for rest in options]
        span = max(len(rest) for rest in rests)
        batch = torch.full((len(rests), span), self.tokenizer.pad_token_id, dtype=torch.long)
        rest_mask = torch.zeros((len(rests), span), dtype=torch.long)
        for row, rest in enumerate(rests):
            batch[row, : len(rest)] = torch.tensor(rest, dtype=torch.long)
            rest_mask[row, : len(rest)] = 1
        index = torch.tensor(owner, dtype=torch.long)
        lengths = mask.sum(dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        rest_positions = lengths[index][:, None] + torch.arange(span)[None, :]
        name = self.kv_arg
        keep = {"logits_to_keep": 1} if self.keeps_logits else {}
        device = self.device
        with torch.inference_mode():
            first = self.model(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                               use_cache=True, **keep)
            kv = getattr(first, name)
            kv.batch_select_indices(index.to(device))  # each option continues its own prefix's KV cache
            logits = self.model(batch.to(device), attention_mask=torch.cat([mask[index], rest_mask], dim=1).to(device),
                                position_ids=rest_positions.to(device), **{name: kv}).logits
            scores: list[list[float]] = [[] for _ in chunk]
            for row, rest in enumerate(rests):
                # token k of the option is predicted by the prefix's last position, then by the option's own
                steps = torch.cat([first.logits[owner[row], -1:], logits[row, : len(rest) - 1]]).float()
                target = torch.tensor(rest, device=steps.device)
                scores[owner[row]].append(float(F.log_softmax(steps, dim=-1).gather(-1, target[:, None]).sum()))
        return scores

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            return [self.prefix_token_id], self.encode(continuation)
        context, continuation = split_whitespace(context, continuation)
        if context == "":
            return [self.prefix_token_id], self.encode(continuation)
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids):]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        torch = self.torch
        import torch.nn.functional as F

        self._reset_gpu_peak()
        pairs = [self.encode_pair(r.context, r.continuation) for r in requests]
        limit = self.max_length + 1
        inputs = [tuple((ctx + cont)[-limit:][:-1]) for ctx, cont in pairs]
        # Requests whose model input is the same token sequence share one forward pass: the choices of a
        # question that are one token long all read the logits after its context (lm-evaluation-harness
        # does the same). The logits of a row do not depend on which requests read them.
        readers: dict[tuple[int, ...], list[int]] = {}
        for i, sequence in enumerate(inputs):
            readers.setdefault(sequence, []).append(i)
        unique = list(readers)
        results: list[Loglikelihood | None] = [None] * len(requests)
        order = sorted(range(len(unique)), key=lambda u: -len(unique[u]))
        for start in range(0, len(order), self.batch_size):
            watch = Stopwatch()  # a result's time is its own forward pass's
            chunk = order[start:start + self.batch_size]
            width = max(len(unique[u]) for u in chunk)
            # Right padding and no attention mask, as lm-evaluation-harness does: under causal
            # attention the padding after a sequence cannot change its logits.
            batch = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, u in enumerate(chunk):
                batch[row, : len(unique[u])] = torch.tensor(unique[u], dtype=torch.long)
            # Only the positions some continuation is read from get logits (their union over the rows):
            # the full batch x width x vocabulary is 8 GB at 32 rows of 2k tokens over 32k words in fp32.
            wanted = sorted({p for u in chunk for i in readers[unique[u]]
                             for p in range(max(len(unique[u]) - len(pairs[i][1]), 0), len(unique[u]))})
            column = {p: k for k, p in enumerate(wanted)}
            logits = None  # no continuation to read (all empty): no pass
            if wanted:
                keep = {"logits_to_keep": torch.tensor(wanted, device=self.device)} if self.keeps_logits else {}
                with torch.inference_mode():
                    logits = self.model(batch.to(self.device), **keep).logits
                    if not keep:
                        logits = logits[:, wanted]
            elapsed = watch.elapsed()
            for row, u in enumerate(chunk):
                n = len(unique[u])
                for i in readers[unique[u]]:
                    ctx, cont = pairs[i]
                    first = max(n - len(cont), 0)  # (a continuation longer than the window: its last tokens)
                    if logits is None or first == n:
                        results[i] = Loglikelihood(0.0, True, len(ctx), len(cont), latency_s=elapsed)
                        continue
                    selected = F.log_softmax(logits[row, column[first]: column[n - 1] + 1], dim=-1)
                    target = torch.tensor(cont[len(cont) - (n - first):], dtype=torch.long, device=selected.device)
                    greedy = bool((selected.argmax(dim=-1) == target).all())
                    total = float(selected.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum())
                    results[i] = Loglikelihood(total, greedy, len(ctx), len(cont), latency_s=elapsed)
        peak = self._gpu_peak()
        return [replace(r, gpu_peak_mib=peak) if peak is not None else r for r in results if r is not None]

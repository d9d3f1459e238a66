"""The generation side of the transformers backend: batches of prompts decoded, greedy ones over their
shared prefix (``hf_prefix``: one token per row per step, each row leaving at its own limit, end token
or stop string), sampled ones through transformers' ``generate``; a batch that runs out of memory is
run again as two halves.
"""

from __future__ import annotations

from typing import Any

from .base import GenerateRequest, Reply, Stopwatch, TransientError, apply_stop, tpot
from .hf_load import LoadedModel


class HFGeneration(LoadedModel):
    """Mixin of :class:`~pytest_evals.backends.hf.HFBackend`: generating text."""

    def _complete(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(items)
        # One generate() call samples at one temperature: requests batch with those of their own temperature
        # only (greedy with greedy), long prompts with long ones.
        # (greedy ones keep their order: a batch that continues the last one's rows reuses their KV cache)
        order = sorted(range(len(items)), key=lambda i: (items[i][1].temperature,
                                                         0 if items[i][1].temperature == 0 and self.prefix else -len(items[i][0])))
        by_temperature: dict[float, list[int]] = {}
        for i in order:
            by_temperature.setdefault(items[i][1].temperature, []).append(i)
        for temperature, group in by_temperature.items():
            # greedy: over the prompts' shared prefix, one token per row per step; sampled: transformers' generate
            decode = self._greedy_batch if temperature == 0 and self.prefix is not None else self._generate_batch
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                for i, reply in zip(chunk, self._halving(decode, [items[i] for i in chunk])):
                    replies[i] = reply
        return [r for r in replies if r is not None]

    def _halving(self, decode: Any, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        """One batch; on out-of-memory, its two halves one after the other (and so on)."""
        try:
            return decode(items)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if len(items) < 2 or "out of memory" not in str(exc).lower():
                raise
        if self.prefix is not None:
            self.prefix.forget()  # before emptying the allocator's cache: what it kept is freed too
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        half = len(items) // 2
        return self._halving(decode, items[:half]) + self._halving(decode, items[half:])

    def _row_done(self, generated: list[int], request: GenerateRequest, eos_ids: set[int]) -> bool:
        """Whether a row's generation ends here: its token limit, an end token, or a stop string in its tail."""
        if len(generated) >= request.max_tokens or generated[-1] in eos_ids:
            return True
        if not request.stop:
            return False
        tail = self.tokenizer.decode(generated[-16:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return any(s in tail for s in request.stop)

    def _greedy_batch(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        """Greedy decoding of a batch over its shared prefix: each row stops at its own limit, end token or
        stop string, and leaves the batch there."""
        assert self.prefix is not None
        tok = self.tokenizer
        prompts = [self.encode(p) for p, _ in items]
        requests = [r for _, r in items]
        eos_ids = {tok.eos_token_id, *(_as_list(self.model.generation_config.eos_token_id))} - {None}
        deadline = self.settings.timeout_s
        generated: list[list[int]] = [[] for _ in items]
        finish = ["length"] * len(items)
        finished_at: dict[int, float] = {}
        watch = Stopwatch()
        self._reset_gpu_peak()
        rows = self.prefix.prefill(prompts)
        active = list(range(len(items)))
        if any(r.max_tokens < 1 for r in requests):
            keep = [k for k, i in enumerate(active) if requests[i].max_tokens >= 1]
            self.prefix.select(rows, keep)
            active = [active[k] for k in keep]
        while active:
            tokens = rows.last.argmax(dim=-1).tolist()
            watch.mark_first()
            going = []
            for k, (i, token) in enumerate(zip(active, tokens)):
                generated[i].append(token)
                if token in eos_ids:
                    finish[i] = "stop"
                if self._row_done(generated[i], requests[i], eos_ids):
                    finished_at[i] = watch.elapsed()
                else:
                    going.append(k)
            if not going:
                break
            if deadline and watch.elapsed() >= deadline:
                raise TransientError(f"{self.spec.label}: generation passed the {deadline:g} s deadline", "timeout")
            if len(going) < len(active):
                self.prefix.select(rows, going)
                active, tokens = [active[k] for k in going], [tokens[k] for k in going]
            self.prefix.step(rows, tokens)
        latency = watch.elapsed()
        if deadline and latency >= deadline:  # the last token, or a prefill, past it: a timeout as on the plain path
            raise TransientError(f"{self.spec.label}: generation passed the {deadline:g} s deadline", "timeout")
        peak = self._gpu_peak()
        replies = []
        for i, request in enumerate(requests):
            text, stopped = apply_stop(tok.decode(generated[i], skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False), request.stop)
            own = finished_at.get(i, latency)
            ttft = watch.ttft()
            replies.append(Reply(
                text=text, prompt_tokens=len(prompts[i]), completion_tokens=len(generated[i]), latency_s=own,
                ttft_s=ttft, tpot_s=tpot(own, ttft, len(generated[i])),
                finish_reason="stop" if stopped else finish[i], backend=self.spec.raw, gpu_peak_mib=peak))
        return replies

    def _generate_batch(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        torch = self.torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
        encoded = tok([p for p, _ in items], add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
        prompt_len = encoded.input_ids.shape[1]
        requests = [r for _, r in items]
        limits = [r.max_tokens for r in requests]
        watch = Stopwatch()
        eos_ids = {tok.eos_token_id, *(_as_list(self.model.generation_config.eos_token_id))} - {None}
        finished_at: dict[int, float] = {}  # row -> seconds until its own last token
        backend = self

        class Watch(StoppingCriteria):
            """Marks the first token's time, each row's own last token, and stops each row at its own limit
            or stop string."""

            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001
                watch.mark_first()
                generated = input_ids[:, prompt_len:]
                done = []
                for index, (row, request) in enumerate(zip(generated, requests)):
                    hit = backend._row_done(row.tolist(), request, eos_ids)
                    if hit and index not in finished_at:
                        finished_at[index] = watch.elapsed()
                    done.append(hit)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        temperature = requests[0].temperature
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max(limits),
            stopping_criteria=StoppingCriteriaList([Watch()]),
            pad_token_id=tok.pad_token_id,
            do_sample=temperature > 0,
        )
        self._reset_gpu_peak()
        if temperature > 0:
            kwargs["temperature"] = temperature
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.settings.timeout_s:
            kwargs["max_time"] = self.settings.timeout_s
        with torch.inference_mode():
            output = self.model.generate(**encoded, **kwargs)
        latency = watch.elapsed()
        peak = self._gpu_peak()
        if self.settings.timeout_s and latency >= self.settings.timeout_s:
            raise TransientError(f"{self.spec.label}: generation passed the {self.settings.timeout_s:g} s deadline",
                                 "timeout")

        replies = []
        for index, (row, mask, request) in enumerate(zip(output, encoded.attention_mask, requests)):
            generated = row[prompt_len:].tolist()[: request.max_tokens]
            finish = "length"
            for k, token in enumerate(generated):
                if token in eos_ids:
                    generated, finish = generated[: k + 1], "stop"
                    break
            text, stopped = apply_stop(tok.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False), request.stop)
            completion_tokens = len(generated)
            ttft = watch.ttft()
            own = finished_at.get(index, latency)  # this row's last token, not the batch's
            replies.append(Reply(
                text=text,
                prompt_tokens=int(mask.sum()),
                completion_tokens=completion_tokens,
                latency_s=own,
                ttft_s=ttft,
                tpot_s=tpot(own, ttft, completion_tokens),
                finish_reason="stop" if stopped else finish,
                backend=self.spec.raw,
                gpu_peak_mib=peak,
            ))
        return replies


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]

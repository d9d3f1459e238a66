"""vLLM's offline engine (``vllm.LLM``), imported only when a ``vllm:`` spec loads.

Spec options other than the few read here go to ``LLM(...)`` as keyword arguments, e.g.
``vllm:ORG/NAME?tensor_parallel_size=2&gpu_memory_utilization=0.8``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .base import (
    Backend,
    BackendSettings,
    ChatRequest,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    Reply,
    Stopwatch,
    apply_stop,
    likeliest,
    split_whitespace,
    tpot,
)
from .specs import ModelSpec, SpecError
from .template_chat import TemplateChat, template_messages
from .tool_format import parse_tool_calls, plain_messages, template_knows_tools

INSTALL_HINT = "pip install 'pytest-llm-evals[vllm]' (needs a CUDA GPU)"


class VLLMBackend(TemplateChat, Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools"})
    batches_across_cases = True
    transport_options = frozenset({"batch_size", "device", "tensor_parallel_size", "gpu_memory_utilization",
                                   "max_num_seqs"})
    suggested_for = frozenset({"loglikelihood"})

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise SpecError(f"--model {spec.raw} needs vllm; install with: {INSTALL_HINT}")
        if spec.target.startswith(("/", ".", "~")) and not Path(spec.target).expanduser().exists():
            raise SpecError(f"--model {spec.raw}: no such model folder {spec.target}; check the path")

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str | None:
        from .hf import weights_fingerprint

        try:
            return weights_fingerprint(spec)
        except (SpecError, OSError, ValueError):
            return None  # a hub id vLLM fetches itself: the spec alone identifies it

    @classmethod
    def load_note(cls, spec: ModelSpec) -> str | None:
        return f"evals: starting the vLLM engine for {spec.label} (it loads the weights onto the GPU first)"

    def __init__(self, spec: ModelSpec, settings: BackendSettings, llm: Any = None) -> None:
        super().__init__(spec, settings)
        import vllm

        self.vllm = vllm
        if llm is None:
            options = dict(spec.options)
            options.setdefault("disable_log_stats", False)  # keeps per-request metrics (first token time)
            llm = vllm.LLM(model=spec.target, **options)
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()

    def _params(self, max_tokens: int, temperature: float, stop: Sequence[str] = (), **extra: Any) -> Any:
        return self.vllm.SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                        stop=list(stop) or None, **extra)

    @staticmethod
    def _gpu_memory() -> float | None:
        # vLLM's engine may run in its own process: ask the driver (pynvml), not torch's allocator
        from .gpu_memory import nvml_used_mib

        return nvml_used_mib()

    def _replies(self, outputs: Sequence[Any], stops: Sequence[Sequence[str]], watch: Stopwatch) -> list[Reply]:
        batch = watch.elapsed()
        peak = self._gpu_memory()
        replies = []
        for output, stop in zip(outputs, stops):
            completion = output.outputs[0]
            text, _ = apply_stop(completion.text, stop)
            n_out = len(completion.token_ids)
            ttft = _first_token_s(output)
            latency = _last_token_s(output) or batch  # the request's own time where the engine keeps it
            replies.append(Reply(
                text=text,
                prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=n_out,
                latency_s=latency,
                ttft_s=ttft,
                tpot_s=tpot(latency, ttft, n_out),
                finish_reason=completion.finish_reason,
                backend=self.spec.raw,
                gpu_peak_mib=peak,
            ))
        return replies

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        # vLLM schedules a whole list at once; one SamplingParams per request keeps their settings.
        params = [self._params(r.max_tokens, r.temperature, r.stop) for r in requests]
        watch = Stopwatch()
        outputs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        return self._replies(outputs, [r.stop for r in requests], watch)

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        """``LLM.chat`` over the batch, one call per distinct tool list; forced tools field by field, side by side."""
        replies: list[Reply | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        forced = [i for i, r in enumerate(requests) if r.tools and r.tool_choice not in ("auto", "none")]
        for i, reply in zip(forced, self._forced_replies([(self.chat_prompt(requests[i]), requests[i]) for i in forced])):
            replies[i] = reply
        for i, r in enumerate(requests):
            if i not in forced:
                tools = list(r.tools) if r.tool_choice != "none" else []
                groups.setdefault(json.dumps(tools, sort_keys=True), []).append(i)
        knows_tools = template_knows_tools(getattr(self.tokenizer, "chat_template", None))
        for key, indices in groups.items():
            tools = json.loads(key)
            batch = [requests[i] for i in indices]
            conversations = [template_messages(r.messages) if knows_tools or not tools
                             else plain_messages(r.messages, tools) for r in batch]
            params = [self._params(r.max_tokens, r.temperature) for r in batch]
            watch = Stopwatch()
            extra = {"tools": tools} if tools and knows_tools else {}
            outputs = self.llm.chat(conversations, params, use_tqdm=False, **extra)
            for i, reply in zip(indices, self._replies(outputs, [() for _ in batch], watch)):
                if tools:
                    content, calls = parse_tool_calls(reply.text, [t["function"]["name"] for t in tools])
                    if calls:
                        reply = replace(reply, text=content, tool_calls=tuple(calls), finish_reason="tool_calls")
                replies[i] = reply
        return [r for r in replies if r is not None]

    def _complete_texts(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        return self.generate([request for _, request in items])

    def _choose(self, context: str, options: list[str]) -> int:
        return self._choose_many([(context, options)])[0]

    def _choose_many(self, items: list[tuple[str, list[str]]]) -> list[int]:
        """Every option of every item scored in one ``loglikelihood`` call (vLLM schedules the list)."""
        scores = [r.logprob for r in self.loglikelihood(
            [LoglikelihoodRequest(context, o) for context, options in items for o in options])]
        picks, start = [], 0
        for _, options in items:
            picks.append(likeliest(scores[start:start + len(options)]))
            start += len(options)
        return picks

    def context_window(self) -> int | None:
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        limit = getattr(config, "max_model_len", None)
        return int(limit) if limit else None

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Prompt logprobs of context+continuation, scored on the tokens past the context's."""
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        prompts, spans = [], []
        for r in requests:
            context, continuation = split_whitespace(r.context, r.continuation)
            if context:
                context_ids = encode(context)
                whole = encode(context + continuation)
            else:
                prefix = self.tokenizer.bos_token_id
                prefix = prefix if prefix is not None else self.tokenizer.eos_token_id
                context_ids = [prefix]
                whole = context_ids + encode(continuation)
            prompts.append({"prompt_token_ids": whole})
            spans.append((len(context_ids), whole))
        params = self._params(1, 0.0, prompt_logprobs=1)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        peak = self._gpu_memory()
        results = []
        for output, (n_context, whole) in zip(outputs, spans):
            total, greedy = 0.0, True
            for position in range(n_context, len(whole)):
                entry = output.prompt_logprobs[position]  # token id -> Logprob(logprob, rank, ...)
                chosen = entry[whole[position]]
                total += float(chosen.logprob)
                greedy = greedy and getattr(chosen, "rank", 1) == 1
            results.append(Loglikelihood(total, greedy, n_context, len(whole) - n_context, gpu_peak_mib=peak))
        return results


def _first_token_s(output: Any) -> float | None:
    """Time to first token from vLLM's request metrics, when the engine keeps them."""
    metrics = getattr(output, "metrics", None)
    if metrics is None:
        return None
    first = getattr(metrics, "first_token_time", None)
    arrival = getattr(metrics, "arrival_time", None)
    if first is None or arrival is None:
        return None
    return max(float(first) - float(arrival), 0.0)


def _last_token_s(output: Any) -> float | None:
    """Time from a request's arrival to its own last token, from vLLM's request metrics; None without them."""
    metrics = getattr(output, "metrics", None)
    last = getattr(metrics, "last_token_time", None) or getattr(metrics, "finished_time", None)
    arrival = getattr(metrics, "arrival_time", None)
    if last is None or arrival is None:
        return None
    return max(float(last) - float(arrival), 0.0)

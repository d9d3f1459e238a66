"""transformers backend: ``hf:`` specs and the embedded default ``smollm2``.

torch and transformers are imported when a model loads, never at module import. Loading is
offline-safe: only local files are read (a hub id must already be in the Hugging Face cache).
``loglikelihood`` reproduces lm-evaluation-harness's ``hf`` backend: context and continuation are
encoded together, the continuation's tokens are those past the context's, the context's trailing
whitespace moves to the continuation, and an empty context is replaced by the prefix (BOS) token.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from .specs import ModelSpec, SpecError
from .base import (
    Backend,
    BackendSettings,
    ChatRequest,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    Reply,
    Stopwatch,
    TransientError,
    apply_stop,
    file_digest,
    folder_digest,
    likeliest,
    split_whitespace,
    tpot,
)
from .gguf_copies import dequantized_copy, embedded_gguf
from .hf_prefix import SharedPrefix, cache_arg
from .template_chat import TemplateChat

HF_PACKAGES = ("torch", "transformers", "accelerate")
HF_OPTIONS = ("dtype", "device", "batch_size")
INSTALL_HINT = "pip install 'pytest-llm-evals[hf]'"


def _missing(packages: Sequence[str]) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def _is_pathlike(target: str) -> bool:
    return target.startswith(("/", ".", "~")) or target.endswith(".gguf") or os.sep in target[:1]


def resolve_source(spec: ModelSpec) -> tuple[str, Path | None]:
    """(folder or hub id to load from, GGUF file or None). Raises SpecError with the fix."""
    if spec.embedded:
        return "", embedded_gguf()
    target = spec.target
    if _is_pathlike(target):
        path = Path(target).expanduser()
        if target.endswith(".gguf"):
            if not path.is_file():
                raise SpecError(f"--model {spec.raw}: no such GGUF file {path}; check the path")
            return "", path
        if not path.is_dir():
            raise SpecError(f"--model {spec.raw}: no such model folder {path}; check the path")
        if not (path / "config.json").is_file():
            raise SpecError(f"--model {spec.raw}: {path} has no config.json; point at a transformers model folder")
        return str(path), None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(target, "config.json")
    except ValueError as exc:  # not a valid hub id
        raise SpecError(f"--model {spec.raw}: {exc}; use hf:ORG/NAME, hf:/local/dir or hf:/path/model.gguf") from None
    if not isinstance(cached, str):
        raise SpecError(
            f"--model {spec.raw}: {target} is not in the local Hugging Face cache and models are never "
            f"downloaded during a run; fetch it once with `hf download {target}`, or pass a local folder"
        )
    return target, None


def weights_fingerprint(spec: ModelSpec) -> str:
    """A digest of the GGUF file or model folder, or the hub snapshot's revision."""
    source, gguf = resolve_source(spec)
    if gguf is not None:
        return "gguf:" + file_digest(gguf)
    if Path(source).is_dir():
        return "dir:" + folder_digest(Path(source))
    from huggingface_hub import try_to_load_from_cache

    return "rev:" + Path(str(try_to_load_from_cache(source, "config.json"))).parent.name


class HFBackend(TemplateChat, Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools"})
    batches_across_cases = True
    transport_options = frozenset({"batch_size", "device"})
    suggested_for = frozenset({"generate", "chat", "loglikelihood", "tools"})

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        missing = _missing(HF_PACKAGES)
        if missing:
            raise SpecError(f"--model {spec.raw} needs {', '.join(missing)}; install with: {INSTALL_HINT}")
        _, gguf = resolve_source(spec)
        if gguf is not None and _missing(["gguf"]):
            raise SpecError(f"--model {spec.raw}: loading a GGUF file needs the gguf package; install with: {INSTALL_HINT}")
        unknown = sorted(set(dict(spec.options)) - set(HF_OPTIONS))
        if unknown:
            raise SpecError(f"--model {spec.raw}: unknown option {', '.join(unknown)}; "
                            f"hf: specs take {', '.join(HF_OPTIONS)}")
        batch_size = spec.option("batch_size", 1)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SpecError(f"--model {spec.raw}: batch_size={batch_size} must be a whole number >= 1")
        dtype = spec.option("dtype", "auto")
        if dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise SpecError(f"--model {spec.raw}: dtype={dtype} is not one of auto, float32, float16, bfloat16")

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str | None:
        return weights_fingerprint(spec)

    def __init__(self, spec: ModelSpec, settings: BackendSettings) -> None:
        super().__init__(spec, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch warns about the pynvml shim
            import torch
            import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        device = str(spec.option("device", "cuda" if torch.cuda.is_available() else "cpu"))
        dtype_name = str(spec.option("dtype", "auto"))
        dtype: Any = dtype_name if dtype_name == "auto" else getattr(torch, dtype_name)
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        with _quiet_loading(transformers):
            source, gguf = resolve_source(spec)
            if gguf is not None:
                source = str(dequantized_copy(gguf))
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **{dtype_kw: dtype})
        self.model.to(device).eval()
        if self.model.device.type == "cpu":
            _share_cores(torch)
        self.device = self.model.device
        self.source = source
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = int(spec.option("batch_size", settings.batch_size))
        self.cache_arg = cache_arg(self.model)
        # computes only the logits asked for (``logits_to_keep``): a batch's peak is not batch x width x vocab
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        # greedy decoding and choices run over the prompts' shared prefix, kept between calls (hf_prefix.py)
        self.prefix = (SharedPrefix(self.model, torch, self.tokenizer.pad_token_id, keep_rows=4 * self.batch_size)
                       if SharedPrefix.usable(self.model) else None)  # keeps a round's chunks while the next runs
        if getattr(self.tokenizer, "chat_template", None) is None:
            self.capabilities = frozenset({"generate", "loglikelihood"})

    # --- shared helpers -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @property
    def max_length(self) -> int:
        """Longest sequence the model takes (lm-evaluation-harness's rule)."""
        config = self.model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if hasattr(config, attr):
                return int(getattr(config, attr))
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit and limit < 1e9 else 2048

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    # --- generate / chat ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        return self._complete([(r.prompt, r) for r in requests])

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        if "chat" not in self.capabilities:
            return super().chat(requests)
        return self._template_chat(requests)

    def _complete_texts(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        return self._complete(items)

    def _choose(self, context: str, options: list[str]) -> int:
        return self._choose_many([(context, options)])[0]

    def _choose_many(self, items: list[tuple[str, list[str]]]) -> list[int]:
        """The likeliest option of each (context, options), as ``loglikelihood`` would score them: each
        context runs once and its cache serves all its options (a forced call's enum over a long tools
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
        name = self.cache_arg
        keep = {"logits_to_keep": 1} if self.keeps_logits else {}
        device = self.device
        with torch.inference_mode():
            first = self.model(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                               use_cache=True, **keep)
            cache = getattr(first, name)
            cache.batch_select_indices(index.to(device))  # each option continues its own prefix's cache
            logits = self.model(batch.to(device), attention_mask=torch.cat([mask[index], rest_mask], dim=1).to(device),
                                position_ids=rest_positions.to(device), **{name: cache}).logits
            scores: list[list[float]] = [[] for _ in chunk]
            for row, rest in enumerate(rests):
                # token k of the option is predicted by the prefix's last position, then by the option's own
                steps = torch.cat([first.logits[owner[row], -1:], logits[row, : len(rest) - 1]]).float()
                target = torch.tensor(rest, device=steps.device)
                scores[owner[row]].append(float(F.log_softmax(steps, dim=-1).gather(-1, target[:, None]).sum()))
        return scores

    def context_window(self) -> int | None:
        return self.max_length

    def _complete(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(items)
        # One generate() call samples at one temperature: requests batch with those of their own temperature
        # only (greedy with greedy), long prompts with long ones.
        # (greedy ones keep their order: a batch that continues the last one's rows reuses their cache)
        order = sorted(range(len(items)), key=lambda i: (items[i][1].temperature,
                                                         0 if items[i][1].temperature == 0 and self.prefix else -len(items[i][0])))
        by_temperature: dict[float, list[int]] = {}
        for i in order:
            by_temperature.setdefault(items[i][1].temperature, []).append(i)
        for temperature, group in by_temperature.items():
            # greedy: over the prompts' shared prefix, one token per row per step; sampled: transformers' generate
            run = self._greedy_batch if temperature == 0 and self.prefix is not None else self._generate_batch
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                for i, reply in zip(chunk, self._halving(run, [items[i] for i in chunk])):
                    replies[i] = reply
        return [r for r in replies if r is not None]

    def _halving(self, run: Any, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        """One batch; on out-of-memory, its two halves one after the other (and so on)."""
        try:
            return run(items)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if len(items) < 2 or "out of memory" not in str(exc).lower():
                raise
        if self.prefix is not None:
            self.prefix.forget()  # before emptying the allocator's cache: what it kept is freed too
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        half = len(items) // 2
        return self._halving(run, items[:half]) + self._halving(run, items[half:])

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
        self._read_gpu_peak()
        replies = []
        for i, request in enumerate(requests):
            text, stopped = apply_stop(tok.decode(generated[i], skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False), request.stop)
            own = finished_at.get(i, latency)
            ttft = watch.ttft()
            replies.append(Reply(
                text=text, prompt_tokens=len(prompts[i]), completion_tokens=len(generated[i]), latency_s=own,
                ttft_s=ttft, tpot_s=tpot(own, ttft, len(generated[i])),
                finish_reason="stop" if stopped else finish[i], backend=self.spec.raw))
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
        self._read_gpu_peak()
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
            ))
        return replies

    # --- loglikelihood --------------------------------------------------------------------------
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
        self._read_gpu_peak()
        return [r for r in results if r is not None]

    # --- GPU memory: torch's allocator, per call; None on the CPU ---------------------------------

    def _reset_gpu_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def _read_gpu_peak(self) -> None:
        if self.device.type == "cuda":
            self.last_gpu_peak_mib = self.torch.cuda.max_memory_allocated(self.device) / 2**20

    def close(self) -> None:
        self.model = None
        self.prefix = None


def _share_cores(torch: Any) -> None:
    """Split the CPU cores between xdist workers: N workers each using every core thrash.

    An explicit OMP_NUM_THREADS is the user's choice and is left alone.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@contextlib.contextmanager
def _quiet_loading(transformers: Any) -> Iterator[None]:
    """No loading bars from transformers while the plugin loads a model: in a test run they would land
    inside pytest's lines of progress dots (the plugin's header and summary say what was loaded)."""
    bars = transformers.utils.logging
    was_enabled = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            bars.enable_progress_bar()

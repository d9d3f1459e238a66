"""transformers backend: ``hf:`` specs and the embedded default ``smollm2``.

Loading is ``hf_load`` (offline: local files only), generation ``hf_generate``, loglikelihood and
multiple choice ``hf_scoring``, the shared-prefix KV cache ``hf_prefix``; chat and tool calls go
through the tokenizer's chat template (``template_chat``).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence

from .base import Backend, BackendSettings, ChatRequest, GenerateRequest, Reply
from .gguf_copies import COMPLETE_MARK, copy_dir_for, dequantized_copy
from .hf_generate import HFGeneration
from .hf_load import (
    HF_OPTIONS,
    HF_PACKAGES,
    INSTALL_HINT,
    missing,
    quiet_loading,
    resolve_source,
    share_cores,
    weights_fingerprint,
)
from .hf_prefix import SharedPrefix, kv_arg
from .hf_scoring import HFScoring
from .specs import ModelSpec, SpecError
from .template_chat import TemplateChat


class HFBackend(HFScoring, HFGeneration, TemplateChat, Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools"})
    batches_across_cases = True
    transport_options = frozenset({"batch_size", "device"})
    suggested_for = frozenset({"generate", "chat", "loglikelihood", "tools"})

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        absent = missing(HF_PACKAGES)
        if absent:
            raise SpecError(f"--model {spec.raw} needs {', '.join(absent)}; install with: {INSTALL_HINT}")
        _, gguf = resolve_source(spec)
        if gguf is not None and missing(["gguf"]):
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

    @classmethod
    def load_note(cls, spec: ModelSpec) -> str | None:
        _, gguf = resolve_source(spec)
        if gguf is None or (copy_dir_for(gguf) / COMPLETE_MARK).exists():
            return None  # a model folder, or the copy made before: a few seconds
        return (f"evals: converting {gguf.name} to a transformers model, once (transformers dequantizes every "
                "tensor: about 20 s for the default SmolLM2-135M on CPU); later runs load the copy")

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
        with quiet_loading(transformers):
            source, gguf = resolve_source(spec)
            if gguf is not None:
                source = str(dequantized_copy(gguf))
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **{dtype_kw: dtype})
        self.model.to(device).eval()
        if self.model.device.type == "cpu":
            share_cores(torch)
        self.device = self.model.device
        self.source = source
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = int(spec.option("batch_size", settings.batch_size))
        self.kv_arg = kv_arg(self.model)
        # computes only the logits asked for (``logits_to_keep``): a batch's peak is not batch x width x vocab
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        # greedy decoding and choices run over the prompts' shared prefix, kept between calls (hf_prefix)
        self.prefix = (SharedPrefix(self.model, torch, self.tokenizer.pad_token_id, keep_rows=4 * self.batch_size)
                       if SharedPrefix.usable(self.model) else None)  # keeps a round's chunks while the next runs
        if getattr(self.tokenizer, "chat_template", None) is None:
            self.capabilities = frozenset({"generate", "loglikelihood"})

    # --- generate / chat ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        return self._complete([(r.prompt, r) for r in requests])

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        if "chat" not in self.capabilities:
            return super().chat(requests)
        return self._template_chat(requests)

    def _complete_texts(self, items: list[tuple[str, GenerateRequest]]) -> list[Reply]:
        return self._complete(items)

    def context_window(self) -> int | None:
        return self.max_length

    def close(self) -> None:
        self.model = None
        self.prefix = None

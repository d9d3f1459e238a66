"""Loading a transformers model for the ``hf:`` backend: where its files are, what identifies its weights,
and loading them quietly, offline, with the CPU cores split between xdist workers.

torch and transformers are imported when a model loads, never at module import. Only local files are
read (a hub id must already be in the Hugging Face hub's local cache).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from .base import file_digest, folder_digest
from .gguf_copies import embedded_gguf
from .specs import ModelSpec, SpecError

HF_PACKAGES = ("torch", "transformers", "accelerate")
HF_OPTIONS = ("dtype", "device", "batch_size")
INSTALL_HINT = "pip install 'pytest-llm-evals[hf]'"


def missing(packages: Sequence[str]) -> list[str]:
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


class LoadedModel:
    """What the generation and scoring sides of :class:`~pytest_evals.backends.hf.HFBackend` share: the
    loaded model and tokenizer, its settings, and GPU memory per call (torch's allocator; None on the CPU)."""

    spec: ModelSpec
    settings: Any  # BackendSettings
    torch: Any
    model: Any
    tokenizer: Any
    device: Any
    batch_size: int
    prefix: Any  # hf_prefix.SharedPrefix, or None where the model's KV cache cannot be shared
    kv_arg: str
    keeps_logits: bool

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

    def _reset_gpu_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def _gpu_peak(self) -> float | None:
        """The allocator's peak since ``_reset_gpu_peak``, in MiB; None on the CPU."""
        if self.device.type != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20


def share_cores(torch: Any) -> None:
    """Split the CPU cores between xdist workers: N workers each using every core thrash.

    An explicit OMP_NUM_THREADS is the user's choice and is left alone.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@contextlib.contextmanager
def quiet_loading(transformers: Any) -> Iterator[None]:
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

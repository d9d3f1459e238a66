"""pytest-evals: LLM evaluations as pytest tests.

Importing this package imports nothing heavy (no torch, transformers, vllm or pynvml).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .backends.base import BackendError, Reply, ToolCall
from .data import Row, few_shot, load_dataset
from .errors import DataError

__version__ = "0.1.0"
__all__ = ["BackendError", "DataError", "Reply", "Row", "ToolCall", "few_shot", "load_dataset", "load_jsonl", "__version__"]


def load_jsonl(anchor: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts.

    ``load_jsonl(__file__, "cases.jsonl")`` reads the file beside the calling module; with one
    argument the path is used as given. A missing or empty file, or a bad line, raises ``DataError`` (a ``ValueError``)
    naming the file (and line), so the suite's collection error says what to fix.
    """
    path = Path(anchor)
    if name is not None:
        path = path.parent / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: each line must be a JSON object")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no cases (the file has no JSON lines)")
    return rows

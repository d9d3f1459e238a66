"""Benchmark data: rows from JSONL, JSON, CSV and Parquet files or Hugging Face datasets, ready for
``parametrize`` with stable ids, and a few-shot helper.

    CASES = load_dataset(__file__, "cases.csv")            # a file beside this test module
    CASES = load_dataset("hf:openai/gsm8k", config="main", split="test")   # the local HF cache only

    @pytest.mark.parametrize("case", CASES)
    def test_answer(model, case): ...

Each row is a :class:`Row` (a ``dict``) whose pytest id is the row's own id (the first of ``id``,
``task_id``, ``doc_id``, ``idx``, ``uid`` it has, or the field named by ``id_field``), else a digest of
its content: the same row keeps its id when rows are added, removed or reordered, so ``--evals-resume``,
the baseline gate and ``compare`` pair it across runs. Nothing here is imported before it is used:
pyarrow reads Parquet, ``datasets`` reads Hugging Face datasets (optional extra ``[data]``), offline.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import DataError

ID_FIELDS = ("id", "task_id", "doc_id", "idx", "uid")
HF_PREFIX = "hf:"
FORMATS = (".jsonl", ".json", ".csv", ".parquet")


class Row(dict):
    """A dataset row: a plain ``dict`` whose ``__name__`` is its id, which pytest uses as the case's id."""

    __name__: str

    def __init__(self, data: dict[str, Any], row_id: str) -> None:
        super().__init__(data)
        self.__name__ = row_id

    @property
    def id(self) -> str:
        return self.__name__

    def __reduce__(self) -> Any:  # pickles (xdist, multiprocessing) keep the id
        return (Row, (dict(self), self.__name__))


def load_dataset(source: str | os.PathLike[str], name: str | None = None, *, split: str | None = None,
                 config: str | None = None, id_field: str | None = None) -> list[Row]:
    """The rows of a dataset, each a :class:`Row` with a stable id.

    ``source`` is a file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``; ``.gz`` for the text ones), a
    folder saved with ``datasets``' ``save_to_disk``, or ``hf:ORG/NAME`` for a Hugging Face dataset
    already in the local cache (``config`` and ``split`` pick its part). With ``name``, the file is
    ``name`` beside ``source`` (``load_dataset(__file__, "cases.csv")``). Bad input raises
    ``DataError`` (a ``ValueError``) with one line naming the file and the fix, so collection stops there.
    """
    text = os.fspath(source)
    if text.startswith(HF_PREFIX) and name is None:
        rows = _hub(text[len(HF_PREFIX):], config, split)
        where = text
    else:
        path = Path(text) if name is None else Path(text).parent / name
        rows = _read(path, split)
        where = str(path)
    if not rows:
        raise DataError(f"{where}: no rows")
    return with_ids(rows, where, id_field)


def with_ids(rows: Iterable[dict[str, Any]], where: str = "rows", id_field: str | None = None) -> list[Row]:
    """Rows as :class:`Row` objects: the id field's value, else a digest of the row's content; a
    repeated id gets ``-2``, ``-3``... (in file order)."""
    rows = list(rows)
    if id_field is not None and rows and id_field not in rows[0]:
        raise DataError(f"{where}: no field {id_field!r} for the ids; the fields are {', '.join(map(str, rows[0]))}")
    field = id_field or next((f for f in ID_FIELDS if rows and all(f in r for r in rows)), None)
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: each row must be an object of fields, not {type(row).__name__}")
        base = (str(row[field]) if field is not None else
                "r" + hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:10])
        base = " ".join(base.split()) or "empty"
        seen[base] = seen.get(base, 0) + 1
        out.append(Row(row, base if seen[base] == 1 else f"{base}-{seen[base]}"))
    return out


def _read(path: Path, split: str | None) -> list[dict[str, Any]]:
    if path.is_dir():
        return _saved(path, split)
    suffix = path.suffix.lower()
    packed = suffix == ".gz"
    if packed:
        suffix = Path(path.stem).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use one of "
                         f"{', '.join(FORMATS)} (.gz too for the text ones), or hf:ORG/NAME")
    try:
        if suffix == ".parquet":
            return _parquet(path)
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    if packed:
        data = gzip.decompress(data)
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if suffix == ".csv":
        return _csv(path, content)
    if suffix == ".json":
        return _json(path, content)
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def _csv(path: Path, content: str) -> list[dict[str, Any]]:
    """Rows under the header row; a row with more or fewer fields than the header, or a quote left open
    (which would swallow the rows after it), is a DataError naming its lines."""
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    start = 1  # the line where the next row starts
    try:
        for fields in reader:
            where = f"{path}:{start}" if reader.line_num == start else f"{path}:{start}-{reader.line_num}"
            start = reader.line_num + 1
            if not fields:
                continue  # a blank line
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                opened = "; a quote left open there joins the rows after it" if any("\n" in f for f in fields) else ""
                fix = ("quote a field that holds a comma, or remove the extra field" if len(fields) > len(header)
                       else "give the row every field, empty ones too (a,,c)")
                raise DataError(f"{where}: {len(fields)} fields where the header has {len(header)} "
                                f"({', '.join(header)}){opened}; {fix}")
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        raise DataError(f"{path}:{start}: not valid CSV ({exc}); check the quotes of the row that starts there") from None
    return rows


def _json(path: Path, content: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):  # {"data": [...]} or another single list of rows
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of rows, or an object holding one list of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows")
    return data


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'pytest-llm-evals[data]'") from None
    if not path.is_file():
        raise DataError(f"{path}: cannot read the data file (no such file)")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow's own errors: a truncated or foreign file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _datasets_module(where: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}: Hugging Face datasets need the datasets package: "
                         "pip install 'pytest-llm-evals[data]'") from None
    return datasets


def _saved(folder: Path, split: str | None) -> list[dict[str, Any]]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not ((folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists()):
        raise DataError(f"{folder}: a folder, but not one saved with datasets' save_to_disk; name a data file")
    datasets = _datasets_module(str(folder))
    data = datasets.load_from_disk(str(folder))
    return _split_rows(data, split, str(folder))


def _split_rows(data: Any, split: str | None, where: str) -> list[dict[str, Any]]:
    if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict: one split must be named
        splits = list(data.keys())
        if split is None:
            if len(splits) != 1:
                raise DataError(f"{where}: has the splits {', '.join(splits)}; pick one with split=...")
            split = splits[0]
        if split not in data:
            raise DataError(f"{where}: no split {split!r}; it has {', '.join(splits)}")
        data = data[split]
    return [dict(row) for row in data]


def _hub(name: str, config: str | None, split: str | None) -> list[dict[str, Any]]:
    """A hub dataset from the local cache only: a run never downloads (as with models)."""
    where = f"{HF_PREFIX}{name}"
    datasets = _datasets_module(where)
    previous = os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # not cached (ConnectionError, FileNotFoundError, DatasetNotFoundError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{where}: not in the local Hugging Face cache, and a run never downloads ({first[:200]}); fetch it "
            f"once with: python -c \"import datasets; datasets.load_dataset({name!r}, {config!r})\"") from None
    finally:
        for key, value in zip(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"), previous):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return _split_rows(data, split, where)


def few_shot(pool: Sequence[dict[str, Any]], k: int, *, exclude: dict[str, Any] | None = None,
             seed: int = 0) -> list[dict[str, Any]]:
    """``k`` examples from ``pool`` for a case's prompt, never the case itself (``exclude``, matched by
    id where rows have one, else by content). The choice depends only on ``seed`` and the case, so a
    case gets the same examples on every run and under any worker."""
    if k < 0:
        raise ValueError(f"few_shot(k={k}): k must not be negative")
    key = _identity(exclude) if exclude is not None else None
    candidates = [row for row in pool if key is None or _identity(row) != key]
    if k > len(candidates):
        raise ValueError(f"few_shot(k={k}): the pool has {len(candidates)} examples besides the case")
    rng = random.Random(f"{seed}:{key}")
    return rng.sample(candidates, k)


def _identity(row: dict[str, Any]) -> str:
    if isinstance(row, Row):
        return row.id
    return json.dumps(row, sort_keys=True, default=str)

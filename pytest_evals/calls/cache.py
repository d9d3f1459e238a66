"""The call cache: a model call's answer, kept by everything that decides it, so a rerun pays nothing.

``--evals-cache`` chooses the mode:

- ``off`` (default): no cache.
- ``use``: a call found in the cache is answered from it; a new call that succeeds is stored.
- ``refresh``: every call goes to the model; its answer replaces the stored one.
- ``replay``: no model is loaded and no connection opened; every call must be in the cache, and a
  miss ends its case as ``error`` with one line naming the request and how to record it.

A key is the SHA-256 of a versioned JSON list: the backend kind, the model (its spec without the
options its backend declares as transport, so the spec's other options, such as ``seed`` or extra
request fields, are in it), the method, the whole request (prompt or messages, tool schemas,
tool_choice, max_tokens, temperature, stop) and the sample index; never the server that answered (of a
spec naming several, ``openai:NAME@URL1,URL2``, any may), which is not stored with the answer either.
The weights' fingerprint is kept beside the answer rather than in the key: an answer recorded for other
weights is stale (``use`` calls the model again), while a machine without the weights (replay-only CI)
can still replay.

The cache is its own SQLite file (default ``.evals/cache.sqlite``), so it can be kept as a CI artifact
or committed. Every process (each xdist worker) opens it itself; SQLite's locking (WAL, a busy timeout)
orders the writes. Only whole answers are stored: a call that failed, a batch's failed request or a
stream cut short never reaches it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from ..backends.base import (
    Backend,
    BackendError,
    BackendSettings,
    ChatRequest,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    Reply,
    ToolCall,
)
from ..backends.specs import ModelSpec
from ..errors import ConfigError

CACHE_VERSION = 1
MODES = ("off", "use", "refresh", "replay")
DEFAULT_CACHE = ".evals/cache.sqlite"
BUSY_TIMEOUT_S = 30.0


class CacheMiss(BackendError):
    """Replay found no answer for a call: the case ends as ``error`` (never retried)."""


class CacheError(ConfigError):
    """The cache file cannot be used; the message names the file and the fix."""


def parse_mode(text: str, where: str = "--evals-cache") -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{where} {text!r}: expected one of {', '.join(MODES)}")
    return mode


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr, ensure_ascii=False)


def request_fields(request: Any) -> dict[str, Any]:
    """Every field of a request dataclass, as JSON-able values (tuples become lists)."""
    return {f.name: getattr(request, f.name) for f in fields(request)}


def call_key(backend: str, model: str, method: str, request: Any, sample: int = 0) -> str:
    """``c1:`` and the SHA-256 of everything that decides the answer (see the module's docstring)."""
    payload = _stable([CACHE_VERSION, backend, model, method, request_fields(request), sample])
    return f"c{CACHE_VERSION}:" + hashlib.sha256(payload.encode()).hexdigest()


def describe(method: str, request: Any) -> str:
    """A request in a few words, for a miss's line."""
    if method == "chat":
        last = request.messages[-1] if request.messages else {}
        text = f"{last.get('role', '?')}: {last.get('content') or ''}"
        extra = f", {len(request.messages)} messages" + (f", {len(request.tools)} tools" if request.tools else "")
    elif method == "generate":
        text, extra = request.prompt, ""
    else:
        text, extra = request.context + request.continuation, ""
    text = " ".join(str(text).split())
    return f"{method}({text[:60]!r}{'...' if len(text) > 60 else ''}{extra})"


# --- answers as stored -----------------------------------------------------------------------------
def dump_result(result: Reply | Loglikelihood) -> str:
    """An answer as JSON, its dicts in their own order (a tool call's arguments are sent back as written)."""
    if isinstance(result, Reply):
        data = asdict(result)
        for name in ("cost_usd", "stream_cuts", "cached", "gpu_peak_mib", "server"):  # this run's, not the answer's
            data.pop(name, None)
        data = {"type": "reply", **data}
    else:
        data = {"type": "loglikelihood",
                **{k: v for k, v in asdict(result).items() if k not in ("cached", "gpu_peak_mib", "server")}}
    return json.dumps(data, default=repr, ensure_ascii=False)


def load_result(text: str) -> Reply | Loglikelihood:
    data = json.loads(text)
    kind = data.pop("type")
    if kind == "loglikelihood":
        return Loglikelihood(**data, cached=True)
    calls = tuple(ToolCall(**c) for c in data.pop("tool_calls") or ())
    return Reply(**data, tool_calls=calls, cached=True)


def storable(result: Any) -> bool:
    """An answer the backend returned (a failed request raises, or is None in a partial batch)."""
    return isinstance(result, (Reply, Loglikelihood))



class CallCache:
    """One process's view of the cache file; opened on first use."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = Path(path)
        self.mode = mode
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the batch planner's threads store answers too

    @property
    def reads(self) -> bool:
        return self.mode in ("use", "replay")

    @property
    def writes(self) -> bool:
        return self.mode in ("use", "refresh")

    def _error(self, exc: BaseException) -> CacheError:
        return CacheError(f"{self.path}: the call cache cannot be used ({exc}); move it aside, or pass another "
                          "--evals-cache-path")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.mode == "replay" and not self.path.is_file():
                raise CacheError(f"{self.path}: no call cache to replay; record one first with --evals-cache=use "
                                 "(or pass --evals-cache-path)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
                if self.mode != "replay":
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, version INTEGER, backend TEXT,"
                        " model TEXT, fingerprint TEXT, method TEXT, sample INTEGER, request TEXT, result TEXT,"
                        " created_at TEXT, used_at TEXT, hits INTEGER DEFAULT 0)")
                conn.execute("SELECT count(*) FROM answers").fetchone()
            except (sqlite3.Error, OSError) as exc:
                raise self._error(exc) from None
            self._conn = conn
        return self._conn

    def open(self) -> None:
        """Open the file now (start-up), so a missing or unusable one is reported before any case runs."""
        with self._lock:
            self._db()

    def get(self, key: str, fingerprint: str | None) -> Reply | Loglikelihood | None:
        """The stored answer for ``key``; None where there is none, or it was recorded for other weights."""
        with self._lock:
            try:
                row = self._db().execute("SELECT result, fingerprint FROM answers WHERE key = ?", [key]).fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            if row is None or (fingerprint is not None and row[1] is not None and row[1] != fingerprint):
                return None  # not stored, or stored for other weights (stale)
            if self.mode != "replay":  # a committed cache stays byte-identical when only replayed
                try:
                    self._db().execute("UPDATE answers SET used_at = ?, hits = hits + 1 WHERE key = ?",
                                       [_now(), key])
                except sqlite3.Error:
                    pass  # a busy file costs the use date, never the answer
            return load_result(row[0])

    def was_stale(self, key: str) -> bool:
        """Whether ``key`` is stored (for other weights): a miss's line says so."""
        with self._lock:
            return self._db().execute("SELECT 1 FROM answers WHERE key = ?", [key]).fetchone() is not None

    def put(self, key: str, *, backend: str, model: str, fingerprint: str | None, method: str, sample: int,
            request: Any, result: Reply | Loglikelihood) -> None:
        when = _now()
        with self._lock:
            try:
                self._db().execute(
                    "INSERT OR REPLACE INTO answers (key, version, backend, model, fingerprint, method, sample, request,"
                    " result, created_at, used_at, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    [key, CACHE_VERSION, backend, model, fingerprint, method, sample,
                     _stable(request_fields(request)), dump_result(result), when, when])
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                if self.mode != "replay":
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # another process still writes; its close checkpoints
            self._conn.close()
            self._conn = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the pytest-evals cache command ------------------------------------------------------------------------
def open_for_reading(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CacheError(f"{path}: no call cache here; run pytest with --evals-cache=use to record one, "
                         "or pass --path")
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("SELECT count(*) FROM answers").fetchone()
    except sqlite3.Error as exc:
        raise CacheError(f"{path}: not a pytest-evals call cache ({exc}); pass the right --path") from None
    return conn


def stats(path: Path) -> dict[str, Any]:
    conn = open_for_reading(path)
    try:
        total, hits, first, last = conn.execute(
            "SELECT count(*), coalesce(sum(hits), 0), min(created_at), max(used_at) FROM answers").fetchone()
        groups = conn.execute(
            "SELECT backend, model, method, count(*), coalesce(sum(hits), 0) FROM answers "
            "GROUP BY backend, model, method ORDER BY backend, model, method").fetchall()
    finally:
        conn.close()
    groups = [(backend, _label(model), method, n, used) for backend, model, method, n, used in groups]
    return {"answers": total, "hits": hits, "first": first, "last_used": last, "groups": groups,
            "bytes": path.stat().st_size}


def _label(model: str) -> str:
    """``hf:/m.gguf?dtype=float32`` from a stored identity (``[base, [[option, value], ...], null]``)."""
    try:
        base, options, _ = json.loads(model)
        return base + ("?" + "&".join(f"{k}={v}" for k, v in options) if options else "")
    except (ValueError, TypeError):
        return model


def prune(path: Path, older_than_days: float) -> int:
    """Drop answers not used for ``older_than_days``; returns how many went."""
    conn = open_for_reading(path)
    cutoff = (datetime.now(timezone.utc) - timedelta(days=older_than_days)).isoformat(timespec="seconds")
    try:  # <=: times are whole seconds, and 0 days is every answer (one used this second too)
        removed = conn.execute("DELETE FROM answers WHERE used_at <= ?", [cutoff]).rowcount
        conn.execute("VACUUM")
    finally:
        conn.close()
    return removed


def clear(path: Path) -> int:
    """Remove the cache file (and its WAL files); returns how many answers it held."""
    conn = open_for_reading(path)
    try:
        count = conn.execute("SELECT count(*) FROM answers").fetchone()[0]
    finally:
        conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return count



@dataclass(frozen=True)
class CacheView:
    """One model's calls in the cache: what ``Model`` looks its requests up and stores them by."""

    cache: CallCache
    backend: str  # the backend kind (the spec's prefix)
    model: str  # the model's identity without its weights' fingerprint
    fingerprint: str | None  # the weights', where known; kept beside each answer
    sample: int = 0  # the sample index under repeats

    def key(self, method: str, request: Any) -> str:
        return call_key(self.backend, self.model, method, request, self.sample)

    def lookup(self, method: str, requests: list[Any]) -> list[Any] | None:
        """The stored answers of every request, or None where any is missing (the call is made whole)."""
        found = []
        for request in requests:
            result = self.cache.get(self.key(method, request), self.fingerprint)
            if result is None:
                return None
            found.append(result)
        return found

    def miss(self, method: str, requests: list[Any], spec: str) -> CacheMiss:
        """The error of a replayed call that is not in the cache: the request, and how to record it."""
        stale = any(self.cache.was_stale(self.key(method, r)) for r in requests)
        why = "recorded for other weights" if stale else "not in the call cache"
        return CacheMiss(f"{describe(method, requests[0])} for {spec} is {why} {self.cache.path}; record it with "
                         "--evals-cache=use (--evals-cache=refresh re-records every call)")

    def store(self, method: str, requests: list[Any], results: list[Any]) -> None:
        for request, result in zip(requests, results):
            if storable(result):
                self.cache.put(self.key(method, request), backend=self.backend, model=self.model,
                               fingerprint=self.fingerprint, method=method, sample=self.sample, request=request,
                               result=result)


class ReplayBackend(Backend):
    """What stands for a model under ``--evals-cache=replay``: it loads nothing and opens nothing; the
    model's calls are answered from the cache before they reach it, so any that does is a miss."""

    def __init__(self, spec: ModelSpec, settings: BackendSettings, capabilities: frozenset[str]) -> None:
        super().__init__(spec, settings)
        self.capabilities = capabilities  # type: ignore[misc]  # the class's declared ones: nothing is probed

    def _miss(self, method: str, requests: Sequence[Any]) -> list[Any]:
        raise CacheMiss(f"{describe(method, requests[0])} for {self.spec.raw} is not in the call cache; record it "
                        "with --evals-cache=use")

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        return self._miss("generate", requests)

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        return self._miss("chat", requests)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        return self._miss("loglikelihood", requests)

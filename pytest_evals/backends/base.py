"""The batch-first backend protocol and the values that cross it.

A backend receives a *list* of requests and returns a list of results in the same order, even while
the ``model`` fixture sends one request at a time: batching across cases can then be added above the
backends without touching them. Nothing here imports a heavy library.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .specs import ModelSpec

DEFAULT_BATCH_SIZE = 32  # requests a local model runs in one forward pass (decoding costs little more per step at 32 than at 8)
Message = dict[str, Any]  # OpenAI chat format: {"role": ..., "content": ...}


@dataclass(frozen=True)
class ToolCall:
    """A tool call: as the model asked for it (``id``, ``name``, ``arguments``), and once run, its
    ``result`` or its ``error`` (an exception in the tool, or a call the model wrote badly)."""

    name: str
    arguments: dict[str, Any]
    result: Any = None
    error: str | None = None
    id: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class Reply:
    """What ``model.generate`` and ``model.chat`` return.

    Token counts come from the server's ``usage`` where it reports one, else from the tokenizer.
    Timings are wall-clock seconds; for a request served in a batch they are the batch's.
    ``None`` means the figure does not exist for this backend or call, never "zero".
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    cost_usd: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    backend: str | None = None  # the spec that answered
    prompt_tokens_estimated: bool = False  # prompt_tokens is an estimate: the server could not count them
    stream_cuts: int = 0  # times the server cut this request's stream before it was answered whole
    cached: bool = False  # answered from the call cache (--evals-cache): the figures above are the recorded call's
    gpu_peak_mib: float | None = None  # peak GPU memory of the backend call that answered it, where measured
    server: str | None = None  # the URL of the server that answered (HTTP backends), one of the spec's servers

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()


TOOL_CHOICES = ("auto", "none", "required")  # or a tool's name


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function schemas ({"type": "function", ...})
    tool_choice: str = "auto"  # auto | none | required | a tool's name

    @property
    def forced_tool(self) -> str | None:
        """The tool the model must call: the named one, or with ``required`` and one tool, that one."""
        if not self.tools or self.tool_choice in ("auto", "none"):
            return None
        if self.tool_choice == "required":
            return self.tools[0]["function"]["name"] if len(self.tools) == 1 else None
        return self.tool_choice


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum over the continuation's tokens
    is_greedy: bool | None = None  # every continuation token was the argmax
    context_tokens: int | None = None
    continuation_tokens: int | None = None
    latency_s: float | None = None  # until this result was ready (its forward pass's end), where measured
    cached: bool = False  # answered from the call cache (--evals-cache); latency_s is the recorded call's
    gpu_peak_mib: float | None = None  # peak GPU memory of the backend call that scored it, where measured
    server: str | None = None  # the URL of the server that scored it (HTTP backends)


@dataclass(frozen=True)
class BackendSettings:
    """Transport settings: they change how a backend runs, never what it answers."""

    timeout_s: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    concurrency: int = 8  # most requests an HTTP backend has in flight at once


class PartialBatch(Exception):
    """Some requests of a batch failed: ``results`` holds the others (None where one failed)."""

    def __init__(self, results: list[Any], first_error: BaseException) -> None:
        super().__init__(str(first_error))
        self.results = results
        self.first_error = first_error


class BackendError(RuntimeError):
    """An infrastructure fault: the case ends as ``error``, never as a wrong answer."""


FAULT_KINDS = ("rate_limit", "timeout", "server", "connection")


class TransientError(BackendError):
    """A fault worth retrying: ``kind`` is one of FAULT_KINDS; ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class StreamInterrupted(TransientError):
    """A server cut a stream before its end (llama-cpp-python does so when another request arrives,
    unless started with ``--interrupt_requests False``): retried like a 429, with fewer in flight."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "connection")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ContextOverflow(BackendError):
    """The request does not fit the model's context window (``window`` tokens, when known)."""

    def __init__(self, message: str, window: int | None = None) -> None:
        super().__init__(message)
        self.window = window


class UnsupportedTask(BackendError):
    """The backend cannot serve this kind of request (e.g. loglikelihood over a chat-only API)."""


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (lm-evaluation-harness's rule)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def tpot(latency_s: float, ttft_s: float | None, completion_tokens: int | None) -> float | None:
    """Time per output token after the first."""
    if ttft_s is None or not completion_tokens or completion_tokens < 2:
        return None
    return max(latency_s - ttft_s, 0.0) / (completion_tokens - 1)


def likeliest(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the first."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend:
    """Base class: subclasses override what they can serve and declare it here, on the class.

    Everything the plugin asks of a backend is declared below; a backend that a plugin registers
    (``pytest_evals_register_backends``) is treated exactly as a built-in one.
    """

    # The tasks it serves: generate, chat, loglikelihood, tools, and streaming where time to first
    # token comes from a stream.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # Whether one call with many requests costs less than as many calls with one (a model that batches,
    # a server taken concurrently). Only then are cases run in windows and batched across (see batching.windows).
    batches_across_cases: ClassVar[bool] = False
    # Whether a spec names a server: ``PREFIX:TARGET@http://HOST:PORT/v1`` (the URL lands in
    # ``spec.base_url``; without ``@URL``, ``default_url()``).
    takes_url: ClassVar[bool] = False
    # Spec options that change how it runs, never what it answers (batch size, device): they stay out of
    # every case's key, so changing them does not re-run finished cases under --evals-resume.
    transport_options: ClassVar[frozenset[str]] = frozenset()
    # The tasks for which a skipped case's message suggests routing to this backend (``PREFIX:ORG/NAME``).
    suggested_for: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: ModelSpec, settings: BackendSettings) -> None:
        self.spec = spec
        self.settings = settings

    @classmethod
    def default_url(cls) -> str | None:
        """The server of a spec without ``@URL`` (backends with ``takes_url``); None: no server."""
        return None

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """Cheap start-up validation (package installed, path exists, server answers).

        Raise :class:`SpecError` naming the problem and the fix. Must not load the model.
        """

    @classmethod
    def serves(cls, spec: ModelSpec) -> frozenset[str]:
        """What this spec can serve, asked before loading (routing decides with it). By default the
        class's ``capabilities``; a backend whose servers differ may probe, cheaply and once."""
        return cls.capabilities

    @classmethod
    def load_note(cls, spec: ModelSpec) -> str | None:
        """A line to show before loading ``spec`` where the load takes long (a conversion, an engine's start),
        so the run is not silent meanwhile; None where it is quick. Must be cheap."""
        return None

    @classmethod
    def fingerprint(cls, spec: ModelSpec) -> str | None:
        """What identifies the served weights (a digest, a revision), cheaply; None when unknown.

        It enters every case's key (``--evals-resume``), so changed weights re-run the cases.
        """
        return None

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        raise UnsupportedTask(f"{self.spec.label} cannot serve generate")

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        raise UnsupportedTask(f"{self.spec.label} cannot serve chat")

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        raise UnsupportedTask(f"{self.spec.label} cannot serve loglikelihood")

    def submit(self, method: str, requests: Sequence[Any]) -> list[Future[Any]] | None:
        """Start ``requests`` now and return a future for each (an I/O-bound backend: the batch planner
        resumes each case as its own answer arrives, while the others are in flight). Each future holds
        the result or the request's exception, as a request of a batched call would meet it. None (the
        default): the backend cannot; the planner batches the requests in rounds instead."""
        return None

    def context_window(self) -> int | None:
        """How many tokens (prompt plus reply) the model takes; None when unknown."""
        return None

    def count_chat_tokens(self, request: ChatRequest) -> int | None:
        """Prompt tokens of a chat request as the model will see it; None when the backend cannot tell."""
        return None

    def cancel(self) -> None:
        """Stop the requests in flight from other threads (a batch for cases that will not run); each
        such call ends with an error. Backends that cannot stop a call let it finish."""

    def close(self) -> None:
        pass


SAMPLE_BYTES = 1 << 20
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".pt")


def file_digest(path: Path) -> str:
    """Size plus the first and last MiB: cheap on multi-GB weights, and changes when they do."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            handle.seek(max(size - SAMPLE_BYTES, SAMPLE_BYTES))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:24]


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{path.name}:{file_digest(path)};".encode())
    return digest.hexdigest()[:24]


class Stopwatch:
    """Wall-clock timing of one backend call, with a mark for the first token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def mark_first(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

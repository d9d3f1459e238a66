"""Any OpenAI-compatible HTTP server (OpenAI, vLLM serve, llama.cpp server, TGI) through httpx.

Chat and completions are streamed, so time to first token is the arrival of the first content.
Loglikelihood uses the legacy completions API with ``echo`` and ``logprobs``, where the server
returns prompt log-probabilities. The API key comes from ``OPENAI_API_KEY`` and is sent only in
the request header: it is never part of a spec, a record or a message.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import httpx

from .specs import ModelSpec, SpecError
from .aio import Limiter, shared_loop
from .base import (
    Backend,
    BackendError,
    BackendSettings,
    ChatRequest,
    ContextOverflow,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    PartialBatch,
    Reply,
    Stopwatch,
    StreamInterrupted,
    ToolCall,
    TransientError,
    UnsupportedTask,
    apply_stop,
    parse_retry_after,
    split_whitespace,
    tpot,
)
from .tool_format import as_call

PROBE_TIMEOUT_S = 3.0
BUSY_PROBE_TIMEOUT_S = 30.0  # how long a connected server may take to list its models at start-up
ALIGNMENT_PROBE = ("One, two, three, four, five, six, seven, eight, nine, ten. Monday, Tuesday, Wednesday, "
                   "Thursday, Friday, Saturday, Sunday. January, February, March, April, May, June.")
DEFAULT_TIMEOUT_S = 600.0
OWN_OPTIONS = ("context_window",)  # read here; every other spec option is sent as a request field
CHARS_PER_TOKEN = 3.0  # a deliberately high token estimate where the server cannot count a chat
TEMPLATE_TOKENS_PER_MESSAGE = 5  # what a chat template adds around a message (role markers, separators)
RATE_LIMIT_TRIES = 3  # a batched request that meets 429s
MAX_BATCH_WAIT_S = 5.0
# A request whose stream the server cuts is sent again, up to this many times in all. Two processes that
# share an interrupting server cut each other's streams (whichever request arrives last wins); on a loaded
# machine a request was cut 12 times in a row, so the cap only stops a server that cuts every stream.
CUT_TRIES = 40
MAX_CUT_WAIT_S = 2.0
INTERRUPT_FLAG = "--interrupt_requests False"  # llama-cpp-python's server flag that stops the cuts
DRAIN_TIMEOUT_S = 1.0  # after [DONE], how long the rest of a stream's body is waited for


@functools.cache
def _tls(side: str) -> Any:
    """One TLS context for the process's sync clients (the start-up probes, on the main thread) and one
    for its async clients (the event loop's thread): httpx builds one per client otherwise, loading the
    CA bundle each time (0.05-0.2 s a client, at start-up). httpcore sets ALPN on a context per
    connection, so no context is shared across threads. The same settings as httpx's default."""
    return httpx.create_ssl_context()


def _headers() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class OpenAIBackend(Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools", "streaming"})
    batches_across_cases = True
    takes_url = True  # openai:MODEL@http://HOST:PORT/v1
    # every option but context_window is a request field, which may change the answer: all enter case keys

    @classmethod
    def default_url(cls) -> str:
        return (os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        url = f"{spec.base_url}/models"
        try:
            # a server that is not there fails to connect within seconds; one that is busy (llama.cpp
            # serving another worker's batch) may take longer to answer, and is not reported as missing
            response = httpx.get(url, headers=_headers(), verify=_tls("sync"),
                                 timeout=httpx.Timeout(BUSY_PROBE_TIMEOUT_S, connect=PROBE_TIMEOUT_S))
        except httpx.HTTPError as exc:
            raise SpecError(
                f"--model {spec.raw}: no OpenAI-compatible server answers at {spec.base_url} "
                f"({type(exc).__name__}); start the server or fix the URL after '@' (or OPENAI_BASE_URL)"
            ) from None
        if response.status_code in (401, 403):
            raise SpecError(f"--model {spec.raw}: the server refused the API key (HTTP {response.status_code}); set OPENAI_API_KEY")
        if response.status_code >= 400:
            raise SpecError(f"--model {spec.raw}: GET {url} answered HTTP {response.status_code}; is {spec.base_url} an OpenAI-compatible /v1 URL?")

    @classmethod
    def serves(cls, spec: ModelSpec) -> frozenset[str]:
        """Without loglikelihood where the server returns no prompt logprobs, or misaligned ones."""
        try:
            # as at start-up: a busy server (another worker's batch) may take long to answer; a missing one
            # fails to connect at once
            timeout = httpx.Timeout(BUSY_PROBE_TIMEOUT_S, connect=PROBE_TIMEOUT_S)
            with httpx.Client(base_url=spec.base_url or "", headers=_headers(), timeout=timeout, verify=_tls("sync")) as client:
                response = client.post("/completions", json=echo_payload(spec.target, ALIGNMENT_PROBE))
            if response.status_code >= 400:
                return cls.capabilities - {"loglikelihood"}
            logprobs = (response.json().get("choices") or [{}])[0].get("logprobs") or {}
            if not logprobs.get("tokens") or echo_is_shifted(logprobs["tokens"], logprobs.get("top_logprobs") or []):
                return cls.capabilities - {"loglikelihood"}
        except (httpx.HTTPError, ValueError, AttributeError, TypeError, IndexError):
            pass  # an unreachable server is reported at start-up; here it keeps what it declares
        return cls.capabilities

    def __init__(self, spec: ModelSpec, settings: BackendSettings) -> None:
        super().__init__(spec, settings)
        self._loop = shared_loop()
        self.client = self._new_client()
        self._retired: list[httpx.AsyncClient] = []  # the client replaced last, closed with the backend
        self._inflight: set[Future[Any]] = set()  # the request lists on the loop now, for cancel()
        self._cancelled = False
        # Extra request fields from the spec's options, e.g. openai:NAME@URL?top_p=0.9
        self.extra = {k: v for k, v in spec.options if k not in OWN_OPTIONS}
        window = spec.option("context_window")
        self._window: int | None = int(window) if isinstance(window, (int, float)) else None
        self._window_asked = self._window is not None
        self._stream_tools = True  # False once the server failed a streamed tools request that it answers unstreamed
        self.limiter = Limiter(settings.concurrency)
        self._aligned: bool | None = None  # whether echoed prompt logprobs can be trusted
        self._tokenizer_endpoint: str | None = None  # which tokenizer endpoint the server has
        self._tokenizer_missing: set[str] = set()
        self._overheads: dict[bool, asyncio.Future[int]] = {}  # chat template tokens beyond the text, by system

    def _new_client(self) -> httpx.AsyncClient:
        read = self.settings.timeout_s or DEFAULT_TIMEOUT_S
        return httpx.AsyncClient(base_url=self.spec.base_url or "", headers=_headers(), verify=_tls("async"),
                                 timeout=httpx.Timeout(read, connect=min(read, 10.0)),
                                 limits=httpx.Limits(max_connections=max(10, 2 * self.settings.concurrency)))

    # --- streaming ------------------------------------------------------------------------------
    async def _stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self.client.stream("POST", path, json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._http_error(path, response)
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        await _drain(lines)
                        return
                    try:
                        yield json.loads(data)
                    except json.JSONDecodeError:
                        # the server wrote a broken event (as an unreadable unstreamed answer): a server
                        # fault, not a cut stream, which would be sent again and again
                        raise TransientError(f"{self.spec.label}: malformed stream chunk from {path}: {data[:200]}",
                                             "server") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(path, exc) from exc

    def _http_error(self, path: str, response: httpx.Response) -> BackendError:
        """429 and 5xx are transient (with the server's Retry-After); other statuses are not."""
        code = response.status_code
        message = f"{self.spec.label}: POST {path} answered HTTP {code}: {response.text[:300]}"
        if code == 400 and ("context_length_exceeded" in response.text or "maximum context length" in response.text):
            window = CONTEXT_LENGTH.search(response.text)
            if window:
                self._window = int(window.group(1))
            return ContextOverflow(message, self._window)
        if code == 429:
            return TransientError(message, "rate_limit", parse_retry_after(response.headers.get("retry-after")))
        if code >= 500:
            return TransientError(message, "server", parse_retry_after(response.headers.get("retry-after")))
        return BackendError(message)

    def _transport_error(self, path: str, exc: httpx.HTTPError) -> BackendError:
        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
        return TransientError(f"{self.spec.label}: {type(exc).__name__} on POST {path}: {exc}", kind)

    async def _complete(self, path: str, payload: dict[str, Any], stop: Sequence[str]) -> Reply:
        payload = {**self.extra, **payload, "model": self.spec.target}
        with_tools = bool(payload.get("tools"))
        if with_tools and not self._stream_tools:
            return await self._complete_unstreamed(path, payload, stop)
        watch = Stopwatch()
        parts: list[str] = []
        chunks = chunks_with_content = 0
        usage: dict[str, Any] = {}
        finish = None
        calls: dict[int, dict[str, str]] = {}
        try:
            async for chunk in self._stream(path, {**payload, "stream": True, "stream_options": {"include_usage": True}}):
                chunks += 1
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = choice.get("text") if "text" in choice else delta.get("content")
                    if piece:
                        watch.mark_first()
                        parts.append(piece)
                        chunks_with_content += 1
                    for call in delta.get("tool_calls") or []:
                        watch.mark_first()
                        chunks_with_content += 1
                        _merge_call_delta(calls, call)
                    finish = choice.get("finish_reason") or finish
        except TransientError as exc:
            if chunks == 0 and with_tools and exc.kind == "server":
                return await self._after_failed_stream(path, payload, stop)
            if chunks and exc.kind == "connection":  # the body stopped half-way: the server cut the stream
                raise StreamInterrupted(f"{exc}; the server cut the stream after {chunks} chunks") from exc
            raise
        latency = watch.elapsed()
        if finish is None:
            if chunks == 0 and path == "/chat/completions":
                return await self._after_failed_stream(path, payload, stop)
            # Every OpenAI-compatible server ends a stream with a finish_reason; without one the
            # stream was cut (llama-cpp-python interrupts a stream when another request arrives).
            raise StreamInterrupted(f"{self.spec.label}: POST {path}: the stream ended without a finish_reason "
                                    f"after {len(parts)} chunks (interrupted)")
        text, stopped = apply_stop("".join(parts), stop)
        # Servers that send no usage in streams (llama.cpp) stream one token per chunk, and their
        # tokenizer endpoint counts the prompt.
        completion_tokens = usage.get("completion_tokens", chunks_with_content)
        prompt_tokens, estimated = await self._prompt_tokens(payload, usage)
        ttft = watch.ttft()
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            prompt_tokens_estimated=estimated,
            completion_tokens=completion_tokens,
            latency_s=latency,
            ttft_s=ttft,
            tpot_s=tpot(latency, ttft, completion_tokens),
            tool_calls=tuple(_tool_call(calls[k]) for k in sorted(calls)),
            finish_reason="stop" if stopped else finish,
            backend=self.spec.raw,
        )

    async def _after_failed_stream(self, path: str, payload: dict[str, Any], stop: Sequence[str]) -> Reply:
        """A chat stream that failed before its first event: ask once more without streaming.

        llama-cpp-python answers some requests it cannot stream (an automatic tool choice, a prompt
        past the context window) with an empty 200 stream or a bare 500; unstreamed, the same request
        succeeds or says what is wrong. When it succeeds for a tools request, later tools requests go
        unstreamed (no time to first token for them).
        """
        # The failed stream's connection may still sit in the pool although the server closed it: the
        # next requests go over a new client. Requests in flight on the old one finish on it; the client
        # retired the time before is closed now, so retired clients do not pile up.
        for old in self._retired:
            await old.aclose()
        self._retired = [self.client]
        self.client = self._new_client()
        reply = await self._complete_unstreamed(path, payload, stop)
        if payload.get("tools"):
            self._stream_tools = False
        return reply

    async def _complete_unstreamed(self, path: str, payload: dict[str, Any], stop: Sequence[str]) -> Reply:
        watch = Stopwatch()
        try:
            response = await self.client.post(path, json={**payload, "stream": False})
        except httpx.HTTPError as exc:
            raise self._transport_error(path, exc) from exc
        if response.status_code >= 400:
            raise self._http_error(path, response)
        latency = watch.elapsed()
        try:
            body = response.json()
            choice = body["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"{self.spec.label}: POST {path}: unreadable answer {response.text[:200]}",
                                 "server") from None
        message = choice.get("message") or {}
        calls = {k: {"id": c.get("id") or "", "name": (c.get("function") or {}).get("name") or "",
                     "arguments": (c.get("function") or {}).get("arguments") or ""}
                 for k, c in enumerate(message.get("tool_calls") or [])}
        text, stopped = apply_stop(message.get("content") or choice.get("text") or "", stop)
        usage = body.get("usage") or {}
        completion_tokens = usage.get("completion_tokens")
        prompt_tokens, estimated = await self._prompt_tokens(payload, usage)
        return Reply(
            text=text,
            prompt_tokens=prompt_tokens,
            prompt_tokens_estimated=estimated,
            completion_tokens=completion_tokens,
            latency_s=latency,
            tool_calls=tuple(_tool_call(calls[k]) for k in sorted(calls)),
            finish_reason="stop" if stopped else choice.get("finish_reason"),
            backend=self.spec.raw,
        )

    async def _prompt_tokens(self, payload: dict[str, Any], usage: dict[str, Any]) -> tuple[int | None, bool]:
        """(prompt tokens, whether estimated): the server's usage, else its tokenizer on the prompt, else
        (a chat the server cannot count: llama.cpp) its tokenizer on the messages' text plus each message's
        template tokens, else a deliberately high estimate from the length. Marked estimated, a cost
        from it still counts against the budget."""
        if usage.get("prompt_tokens") is not None:
            return usage["prompt_tokens"], False
        counted = await self._count_prompt(payload)
        if counted is not None:
            return counted, False
        if "messages" not in payload:
            return None, False
        text = _messages_text(payload)
        per_message = TEMPLATE_TOKENS_PER_MESSAGE * len(payload.get("messages") or ())
        counted = await self._count_prompt({"prompt": text})
        if counted is None:
            return int(len(text) / CHARS_PER_TOKEN) + 1 + per_message, True
        return counted + per_message + await self._template_overhead(payload, counted + per_message), True

    async def _template_overhead(self, payload: dict[str, Any], estimate: int) -> int:
        """What the chat template adds beyond the messages' text (a default system prompt where none is
        given, the generation prompt), learnt once per process for chats with and without a system
        message: one unstreamed request of one token, whose usage the server does report."""
        has_system = any(m.get("role") == "system" for m in payload.get("messages") or ())
        if has_system not in self._overheads:
            self._overheads[has_system] = asyncio.ensure_future(self._probe_overhead(payload, estimate))
        return await asyncio.shield(self._overheads[has_system])

    async def _probe_overhead(self, payload: dict[str, Any], estimate: int) -> int:
        body = {"model": self.spec.target, "messages": payload.get("messages"), "max_tokens": 1, "temperature": 0,
                "stream": False}
        try:
            response = await self.client.post("/chat/completions", json=body)
            true = (response.json().get("usage") or {}).get("prompt_tokens") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            true = None
        return true - estimate if isinstance(true, int) else 0

    async def _count_prompt(self, payload: dict[str, Any]) -> int | None:
        """Prompt tokens from the server's own tokenizer, where it has an endpoint for it:
        llama-cpp-python's ``/extras/tokenize/count`` (text prompts) or vLLM's ``/tokenize``."""
        root = (self.spec.base_url or "").removesuffix("/v1")
        candidates = {
            "llama.cpp": (f"{root}/extras/tokenize/count", {"input": payload.get("prompt")}),
            "vllm": (f"{root}/tokenize", {"model": self.spec.target,
                                          **({"prompt": payload["prompt"]} if "prompt" in payload
                                             else {"messages": payload.get("messages")})}),
        }
        order = [self._tokenizer_endpoint] if self._tokenizer_endpoint else list(candidates)
        for name in order:
            if name in self._tokenizer_missing or (name == "llama.cpp" and payload.get("prompt") is None):
                continue  # known to be missing, or it cannot count a chat's messages
            url, body = candidates[name]
            try:
                response = await self.client.post(url, json=body)
                count = response.json().get("count") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                return None  # a busy or failing server: no count this time, but the endpoint may exist
            if isinstance(count, int):
                self._tokenizer_endpoint = name
                return count
            if self._tokenizer_endpoint is None:
                self._tokenizer_missing.add(name)
        return None

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        return self._map(self._one_generate, requests)

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        return self._map(self._one_chat, requests)

    def _map(self, one: Callable[[Any], Awaitable[Any]], requests: Sequence[Any]) -> list[Any]:
        """Each request on its own HTTP call, all of them on the event loop at once, up to the
        concurrency limit in flight (AIMD: a 429 halves the limit and the request waits and tries again,
        up to twice; successes grow it back). A lone request meets its 429 itself: the case's retry
        policy decides. A stream the server cut (StreamInterrupted) halves the limit too and is sent
        again, lone or batched, up to CUT_TRIES times: such a server answers whole, only slower."""
        return self._loop.run(self._gather(one, requests), self._inflight)

    def submit(self, method: str, requests: Sequence[Any]) -> list[Future[Any]] | None:
        """Each request started on the event loop now, as a request of a batch (a 429 waits and tries
        again, a cut stream is sent again), with a future of its own."""
        one = {"generate": self._one_generate, "chat": self._one_chat}.get(method)
        if one is None:
            return None  # loglikelihood checks the server first: in rounds
        futures = []
        for request in requests:
            future = asyncio.run_coroutine_threadsafe(self._one(one, request, True), self._loop.loop)
            self._inflight.add(future)
            future.add_done_callback(self._inflight.discard)
            futures.append(future)
        return futures

    def _one_generate(self, r: GenerateRequest) -> Awaitable[Reply]:
        return self._complete("/completions", {"prompt": r.prompt, "max_tokens": r.max_tokens,
                                               "temperature": r.temperature, **({"stop": list(r.stop)} if r.stop else {})},
                              r.stop)

    def _one_chat(self, r: ChatRequest) -> Awaitable[Reply]:
        return self._complete("/chat/completions", chat_payload(r), ())

    async def _gather(self, one: Callable[[Any], Awaitable[Any]], requests: Sequence[Any]) -> list[Any]:
        batch = len(requests) > 1
        outcomes = await asyncio.gather(*(self._one(one, r, batch) for r in requests), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled (Ctrl-C): not a fault of one request
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            if len(failed) == len(requests):
                raise failed[0]
            raise PartialBatch([None if isinstance(o, Exception) else o for o in outcomes], failed[0])
        return list(outcomes)

    async def _one(self, one: Callable[[Any], Awaitable[Any]], request: Any, batch: bool) -> Any:
        """One request of a call: a lone one meets its 429 itself (the case's retry policy decides); one
        of a batch waits and tries again. A cut stream is sent again either way."""
        tries = RATE_LIMIT_TRIES if batch else 1
        attempt, cuts = 1, 0
        while True:
            async with self.limiter.slot(urgent=not batch):  # a case's own call goes first
                if batch and self._cancelled:
                    raise BackendError(f"{self.spec.label}: not sent: the cases of this batch will not run")
                try:
                    result = await one(request)
                except StreamInterrupted as exc:
                    # the server cuts a stream when another request arrives: fewer at once, and again,
                    # after a random pause so that two processes' requests stop meeting
                    self.limiter.throttled()
                    cuts += 1
                    if cuts >= CUT_TRIES:
                        raise StreamInterrupted(f"{exc}; cut {cuts} times, so given up: start the server "
                                                f"with {INTERRUPT_FLAG}") from None
                    wait = random.uniform(0.0, min(MAX_CUT_WAIT_S, 0.1 * 2 ** cuts))
                except TransientError as exc:
                    if exc.kind != "rate_limit":
                        raise
                    self.limiter.throttled()
                    if attempt >= tries:
                        raise
                    attempt += 1
                    wait = min(exc.retry_after if exc.retry_after is not None else 0.5, MAX_BATCH_WAIT_S)
                else:
                    self.limiter.succeeded()
                    return replace(result, stream_cuts=cuts) if cuts and isinstance(result, Reply) else result
            await asyncio.sleep(wait)  # outside the limiter: the others go on meanwhile

    def context_window(self) -> int | None:
        """From the spec (``?context_window=N``), the server's model list (vLLM's ``max_model_len``),
        or the limit a refused request named."""
        if self._window is None and not self._window_asked:
            self._window_asked = True
            self._loop.run(self._ask_window())
        return self._window

    async def _ask_window(self) -> None:
        try:
            models = (await self.client.get("/models", timeout=PROBE_TIMEOUT_S)).json().get("data") or []
            entry = next((m for m in models if m.get("id") == self.spec.target), models[0] if models else {})
            limit = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
            self._window = int(limit) if limit else None
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            pass

    def count_chat_tokens(self, request: ChatRequest) -> int | None:
        """The server's own count where it has a chat tokenizer endpoint (vLLM), else an estimate
        that errs high (a token per three characters), so trimming keeps the request inside the window."""
        payload = chat_payload(request)
        counted = self._loop.run(self._count_prompt(payload))
        if counted is not None:
            return counted
        text = json.dumps(payload["messages"]) + json.dumps(payload.get("tools") or [])
        return int(len(text) / CHARS_PER_TOKEN) + 1

    # --- loglikelihood --------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        self._loop.run(self._check_alignment(), self._inflight)

        async def one(r: LoglikelihoodRequest) -> Loglikelihood:
            context, continuation = split_whitespace(r.context, r.continuation)
            return score_echo(await self._echo(context + continuation), context, context + continuation,
                              self.spec.label)

        return self._map(one, requests)

    async def _echo(self, prompt: str) -> dict[str, Any]:
        """The server's log-probabilities of ``prompt``'s own tokens (completions with echo)."""
        try:
            response = await self.client.post("/completions", json=echo_payload(self.spec.target, prompt))
        except httpx.HTTPError as exc:
            raise self._transport_error("/completions", exc) from exc
        if response.status_code >= 400:
            raise self._http_error("/completions", response)
        choice = (response.json().get("choices") or [{}])[0]
        logprobs = choice.get("logprobs") or {}
        if not logprobs.get("tokens") or logprobs.get("token_logprobs") is None or logprobs.get("text_offset") is None:
            raise UnsupportedTask(
                f"{self.spec.label}: the server at {self.spec.base_url} returns no prompt logprobs "
                "(completions with echo+logprobs); use an hf: or vllm: spec for loglikelihood"
            )
        return logprobs

    async def _check_alignment(self) -> None:
        """Refuse servers whose echoed logprobs are one token off (llama-cpp-python 0.3.x does this).

        Asked once per backend, on a text any model predicts well: if the top-ranked token at each
        position matches the *next* prompt token more often than the token at that position, every
        score would be read against the wrong distribution.
        """
        if self._aligned is None:
            logprobs = await self._echo(ALIGNMENT_PROBE)
            self._aligned = not echo_is_shifted(logprobs["tokens"], logprobs.get("top_logprobs") or [])
        if not self._aligned:
            raise UnsupportedTask(
                f"{self.spec.label}: the server at {self.spec.base_url} scores each echoed prompt token with "
                "the distribution that follows it (a known llama-cpp-python bug), so its loglikelihoods would "
                "be wrong; use an hf: or vllm: spec for loglikelihood and choose"
            )

    def cancel(self) -> None:
        """Stop the batches in flight, and send no request of a batch from now on (the session is
        over); a case's own call still goes out."""
        self._cancelled = True  # (read on the loop: the requests of a batch that escaped the cancel below)
        for future in list(self._inflight):
            future.cancel()

    def close(self) -> None:
        async def close_all() -> None:
            for client in (*self._retired, self.client):
                await client.aclose()

        self._loop.run(close_all())


CONTEXT_LENGTH = re.compile(r"maximum context length is (\d+)")


def echo_payload(model: str, prompt: str) -> dict[str, Any]:
    """A completions request that returns the prompt's own tokens with their logprobs."""
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}


def _messages_text(payload: dict[str, Any]) -> str:
    """A chat request's text as a chat template renders it, less the template's own tokens."""
    parts = []
    for message in payload.get("messages") or ():
        parts.append(f"{message.get('role')}\n{message.get('content') or ''}")
        if message.get("tool_calls"):
            parts.append(json.dumps(message["tool_calls"]))
    if payload.get("tools"):
        parts.append(json.dumps(payload["tools"]))
    return "\n".join(parts)


def chat_payload(request: ChatRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {"messages": list(request.messages), "max_tokens": request.max_tokens,
                               "temperature": request.temperature}
    if request.tools:
        payload["tools"] = list(request.tools)
        forced = request.forced_tool  # llama.cpp refuses "required"; with one tool it means that tool
        payload["tool_choice"] = ({"type": "function", "function": {"name": forced}} if forced
                                  else request.tool_choice)
    return payload


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read a finished stream's body to its end, so its connection goes back to the pool; a server
    that keeps it open (or cuts it) only costs the connection, never the reply."""
    async def read_rest() -> None:
        async for _ in lines:
            pass

    try:  # (asyncio.wait_for, not asyncio.timeout: that one is Python 3.11's)
        await asyncio.wait_for(read_rest(), DRAIN_TIMEOUT_S)
    except (httpx.HTTPError, asyncio.TimeoutError):  # (3.10: not the builtin TimeoutError)
        pass


def _merge_call_delta(calls: dict[int, dict[str, str]], delta: dict[str, Any]) -> None:
    """Add one streamed ``tool_calls`` delta: arguments arrive in pieces, the id and name once
    (llama.cpp repeats them in every piece, so they are kept, not concatenated)."""
    entry = calls.setdefault(int(delta.get("index") or 0), {"id": "", "name": "", "arguments": ""})
    function = delta.get("function") or {}
    entry["id"] = entry["id"] or delta.get("id") or ""
    entry["name"] = entry["name"] or function.get("name") or ""
    entry["arguments"] += function.get("arguments") or ""


def _tool_call(entry: dict[str, str]) -> ToolCall:
    """A finished call; arguments the model wrote badly become the call's error, fed back to it."""
    call = as_call({"name": entry["name"], "arguments": entry["arguments"]}, None)
    assert call is not None  # a str name always makes a call
    return replace(call, id=entry["id"] or call.id)


def _top1(alternatives: dict[str, float] | None) -> str | None:
    return max(alternatives, key=alternatives.__getitem__) if alternatives else None


def echo_is_shifted(tokens: Sequence[str], top: Sequence[dict[str, float] | None]) -> bool:
    """True when position k's top alternatives predict token k+1 rather than token k."""
    aligned = sum(1 for k in range(1, min(len(tokens), len(top))) if _top1(top[k]) == tokens[k])
    shifted = sum(1 for k in range(1, min(len(tokens) - 1, len(top))) if _top1(top[k]) == tokens[k + 1])
    return shifted > aligned


def score_echo(logprobs: dict[str, Any], context: str, prompt: str, label: str) -> Loglikelihood:
    """Sum the logprobs of the echoed tokens that start at or after the end of ``context``."""
    tokens, values, offsets = logprobs["tokens"], logprobs["token_logprobs"], logprobs["text_offset"]
    top = logprobs.get("top_logprobs") or []
    total, greedy, n_context, n_continuation = 0.0, True, 0, 0
    for k, (value, offset) in enumerate(zip(values, offsets)):
        if offset >= len(prompt):
            break  # the generated token after the echo
        if offset < len(context):
            n_context += 1
            continue
        if value is None:
            raise UnsupportedTask(f"{label}: the server gives no logprob for the first token; give a non-empty context")
        total += float(value)
        n_continuation += 1
        if k < len(top) and _top1(top[k]) not in (None, tokens[k]):
            greedy = False
    return Loglikelihood(total, greedy if top else None, n_context, n_continuation)

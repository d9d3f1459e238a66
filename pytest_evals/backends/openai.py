"""Any OpenAI-compatible HTTP server (OpenAI, vLLM serve, llama.cpp server, TGI) through httpx.

Chat and completions are streamed, so time to first token is the arrival of the first content.
Each request is its own HTTP call, many in flight on one event loop (``aio``) under a limit that halves
on HTTP 429 and on cut streams and grows back. A spec may name several servers of one model
(``openai:NAME@URL1,URL2``): each request goes to one of them (``fleet``: fewest outstanding first, each
server with its own limit and circuit breaker), and one that a server fails for want of the server
(connection, timeout, 5xx) goes to another. The server's client and errors are ``openai_http``; prompt
tokens the server does not report are ``openai_tokens``; loglikelihood (completions with ``echo``) is
``openai_echo``.
"""

from __future__ import annotations

import asyncio
import os
import random
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Sequence

import httpx

from .aio import shared_loop
from .base import (
    Backend,
    BackendError,
    BackendSettings,
    ChatRequest,
    GenerateRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    PartialBatch,
    Reply,
    Stopwatch,
    StreamInterrupted,
    TransientError,
    apply_stop,
    split_whitespace,
    tpot,
)
from .fleet import Fleet, Lane
from .openai_echo import EchoScorer, echoes_aligned
from .openai_format import Streamed, chat_payload, tool_calls_of
from .openai_http import PROBE_TIMEOUT_S, Server, check_server
from .openai_tokens import PromptCounter, length_estimate
from .specs import ModelSpec

OWN_OPTIONS = ("context_window",)  # read here; every other spec option is sent as a request field
RATE_LIMIT_TRIES = 3  # a request of a call of several that meets 429s
MAX_BATCH_WAIT_S = 5.0
# A request whose stream the server cuts is sent again after a random pause (doubling from 0.1 s, at most
# MAX_CUT_WAIT_S: ``cut_pause``), until its pauses would pass CUT_PAUSES_S: the cost accepted per request before giving
# up on a server that cuts every stream. Two processes that share an interrupting server cut each other's
# streams (whichever request arrives last wins); the worst seen, on a loaded machine, was 12 cuts in a row,
# about 9 s of pauses: 20 s leaves twice that, and a server that cuts everything ends each case as an
# error in 20 s of pauses plus its cut attempts, with the line that names the flag.
CUT_PAUSES_S = 20.0
MAX_CUT_WAIT_S = 2.0
INTERRUPT_FLAG = "--interrupt_requests False"  # llama-cpp-python's server flag that stops the cuts


@dataclass(eq=False)
class Endpoint:
    """One server of the spec: its client, its tokenizer endpoint, its echo check, and whether it
    streams tools requests."""

    server: Server
    tokens: PromptCounter
    echo: EchoScorer
    stream_tools: bool = True  # False once it failed a streamed tools request that it answers unstreamed

    @classmethod
    def of(cls, spec: ModelSpec, settings: BackendSettings) -> "Endpoint":
        server = Server(spec, settings.timeout_s, settings.concurrency)
        return cls(server, PromptCounter(spec, lambda: server.client), EchoScorer(server))


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
        check_server(spec)

    @classmethod
    def serves(cls, spec: ModelSpec) -> frozenset[str]:
        """Without loglikelihood where the server returns no prompt logprobs, or misaligned ones."""
        return cls.capabilities if echoes_aligned(spec) is not False else cls.capabilities - {"loglikelihood"}

    def __init__(self, spec: ModelSpec, settings: BackendSettings) -> None:
        super().__init__(spec, settings)
        self._loop = shared_loop()
        # each server with its own limit of --evals-concurrency requests in flight
        self.fleet = Fleet([(url, Endpoint.of(spec.at(url), settings)) for url in spec.urls], settings.concurrency)
        self._inflight: set[Future[Any]] = set()  # the request lists on the loop now, for cancel()
        self._cancelled = False
        # Extra request fields from the spec's options, e.g. openai:NAME@URL?top_p=0.9
        self.extra = {k: v for k, v in spec.options if k not in OWN_OPTIONS}
        window = spec.option("context_window")
        for lane in self.fleet.lanes:
            lane.item.server.window = int(window) if isinstance(window, (int, float)) else None
        self._window_asked = self._window() is not None

    # --- generate and chat ----------------------------------------------------------------------
    async def _complete(self, at: Endpoint, path: str, payload: dict[str, Any], stop: Sequence[str]) -> Reply:
        payload = {**self.extra, **payload, "model": self.spec.target}
        with_tools = bool(payload.get("tools"))
        if with_tools and not at.stream_tools:
            return await self._complete_unstreamed(at, path, payload, stop)
        watch = Stopwatch()
        answer = Streamed()
        try:
            async for event in at.server.stream(path, {**payload, "stream": True, "stream_options": {"include_usage": True}}):
                answer.add(event, watch)
        except TransientError as exc:
            if answer.events == 0 and with_tools and exc.kind == "server":
                return await self._after_failed_stream(at, path, payload, stop)
            if answer.events and exc.kind == "connection":  # the body stopped half-way: the server cut the stream
                raise StreamInterrupted(f"{exc}; the server cut the stream after {answer.events} chunks") from exc
            raise
        latency = watch.elapsed()
        if answer.finish is None:
            if answer.events == 0 and path == "/chat/completions":
                return await self._after_failed_stream(at, path, payload, stop)
            # Every OpenAI-compatible server ends a stream with a finish_reason; without one the
            # stream was cut (llama-cpp-python interrupts a stream when another request arrives).
            raise StreamInterrupted(f"{self.spec.label}: POST {path}: the stream ended without a finish_reason "
                                    f"after {len(answer.parts)} chunks (interrupted)")
        text, stopped = apply_stop("".join(answer.parts), stop)
        # Servers that send no usage in streams (llama.cpp) stream one token per chunk, and their
        # tokenizer endpoint counts the prompt.
        completion_tokens = answer.usage.get("completion_tokens", answer.with_content)
        prompt_tokens, estimated = await at.tokens.prompt_tokens(payload, answer.usage)
        ttft = watch.ttft()
        return Reply(text=text, prompt_tokens=prompt_tokens, prompt_tokens_estimated=estimated,
                     completion_tokens=completion_tokens, latency_s=latency, ttft_s=ttft,
                     tpot_s=tpot(latency, ttft, completion_tokens), tool_calls=answer.tool_calls(),
                     finish_reason="stop" if stopped else answer.finish, backend=self.spec.raw)

    async def _after_failed_stream(self, at: Endpoint, path: str, payload: dict[str, Any],
                                   stop: Sequence[str]) -> Reply:
        """A chat stream that failed before its first event: ask once more without streaming.

        llama-cpp-python answers some requests it cannot stream (an automatic tool choice, a prompt
        past the context window) with an empty 200 stream or a bare 500; unstreamed, the same request
        succeeds or says what is wrong. When it succeeds for a tools request, later tools requests go
        unstreamed (no time to first token for them).
        """
        await at.server.renew()
        reply = await self._complete_unstreamed(at, path, payload, stop)
        if payload.get("tools"):
            at.stream_tools = False
        return reply

    async def _complete_unstreamed(self, at: Endpoint, path: str, payload: dict[str, Any],
                                   stop: Sequence[str]) -> Reply:
        watch = Stopwatch()
        response = await at.server.post(path, {**payload, "stream": False})
        latency = watch.elapsed()
        try:
            body = response.json()
            choice = body["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientError(f"{self.spec.label}: POST {path}: unreadable answer {response.text[:200]}",
                                 "server") from None
        message = choice.get("message") or {}
        text, stopped = apply_stop(message.get("content") or choice.get("text") or "", stop)
        usage = body.get("usage") or {}
        prompt_tokens, estimated = await at.tokens.prompt_tokens(payload, usage)
        return Reply(text=text, prompt_tokens=prompt_tokens, prompt_tokens_estimated=estimated,
                     completion_tokens=usage.get("completion_tokens"), latency_s=latency,
                     tool_calls=tool_calls_of(message), finish_reason="stop" if stopped else choice.get("finish_reason"),
                     backend=self.spec.raw)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Reply]:
        return self._map(self._one_generate, requests)

    def chat(self, requests: Sequence[ChatRequest]) -> list[Reply]:
        return self._map(self._one_chat, requests)

    def _map(self, one: One, requests: Sequence[Any]) -> list[Any]:
        """Each request on its own HTTP call, all of them on the event loop at once, up to the
        concurrency limit in flight (AIMD: a 429 halves the limit and the request waits and tries again,
        up to twice; successes grow it back). A lone request meets its 429 itself: the case's retry
        policy decides. A stream the server cut (StreamInterrupted) halves the limit too and is sent
        again, lone or batched, until its pauses would pass CUT_PAUSES_S: such a server answers whole, only
        slower."""
        return self._loop.run(self._gather(one, requests), self._inflight)

    def submit(self, method: str, requests: Sequence[Any]) -> list[Future[Any]] | None:
        """Each request started on the event loop now, as a request of a batch (a 429 waits and tries
        again, a cut stream is sent again), with a future of its own."""
        one = {"generate": self._one_generate, "chat": self._one_chat}.get(method)
        if one is None:
            return None  # loglikelihood checks the server first: in rounds
        futures = []
        for request in requests:
            future = asyncio.run_coroutine_threadsafe(self._one(one, request, False), self._loop.loop)
            self._inflight.add(future)
            future.add_done_callback(self._inflight.discard)
            futures.append(future)
        return futures

    def _one_generate(self, at: Endpoint, r: GenerateRequest) -> Awaitable[Reply]:
        return self._complete(at, "/completions", {"prompt": r.prompt, "max_tokens": r.max_tokens,
                                               "temperature": r.temperature, **({"stop": list(r.stop)} if r.stop else {})},
                              r.stop)

    def _one_chat(self, at: Endpoint, r: ChatRequest) -> Awaitable[Reply]:
        return self._complete(at, "/chat/completions", chat_payload(r), ())

    async def _gather(self, one: One, requests: Sequence[Any]) -> list[Any]:
        lone = len(requests) == 1
        outcomes = await asyncio.gather(*(self._one(one, r, lone) for r in requests), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled (Ctrl-C): not a fault of one request
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            if len(failed) == len(requests):
                raise failed[0]
            raise PartialBatch([None if isinstance(o, Exception) else o for o in outcomes], failed[0])
        return list(outcomes)

    async def _one(self, one: One, request: Any, lone: bool) -> Any:
        """One request of a call, on the server the fleet chooses: a ``lone`` one (the only request of its
        call: a case's own) meets its 429 itself (the case's retry policy decides); one of several waits and
        tries again. A cut stream is sent again either way. A fault of the server (no connection, a
        timeout, a 5xx) sends it to another server, until every server failed it."""
        tries = 1 if lone else RATE_LIMIT_TRIES
        attempt, cuts, paused = 1, 0, 0.0
        failed_on: list[Lane[Endpoint]] = []
        while True:
            wait = 0.0
            async with self.fleet.slot(urgent=lone, avoid=failed_on) as lane:  # a case's own call goes first
                if not lone and self._cancelled:
                    raise BackendError(f"{self.spec.label}: not sent: the cases of this batch will not run")
                try:
                    result = await one(lane.item, request)
                except StreamInterrupted as exc:
                    # the server cuts a stream when another request arrives: fewer at once, and again,
                    # after a random pause so that two processes' requests stop meeting
                    self.fleet.throttled(lane)
                    cuts += 1
                    wait = cut_pause(cuts, random)
                    if paused + wait > CUT_PAUSES_S:
                        raise StreamInterrupted(f"{exc}; cut {cuts} times ({paused:.1f} s of pauses, the most a "
                                                f"request waits is {CUT_PAUSES_S:g} s), so given up: start the "
                                                f"server with {INTERRUPT_FLAG}") from None
                    paused += wait
                except TransientError as exc:
                    if exc.kind != "rate_limit":
                        self.fleet.failed(lane)
                        failed_on.append(lane)
                        if len(failed_on) == len(self.fleet.lanes):
                            raise
                        continue  # to another server, at once
                    self.fleet.throttled(lane)
                    if attempt >= tries:
                        raise
                    attempt += 1
                    wait = min(exc.retry_after if exc.retry_after is not None else 0.5, MAX_BATCH_WAIT_S)
                else:
                    self.fleet.succeeded(lane)
                    return answered_by(result, lane.name, cuts)
            await asyncio.sleep(wait)  # outside the slot: the others go on meanwhile

    def _window(self) -> int | None:
        return next((lane.item.server.window for lane in self.fleet.lanes if lane.item.server.window), None)

    def context_window(self) -> int | None:
        """From the spec (``?context_window=N``), the server's model list (vLLM's ``max_model_len``),
        or the limit a refused request named."""
        if self._window() is None and not self._window_asked:
            self._window_asked = True
            self._loop.run(self._ask_window())
        return self._window()

    async def _ask_window(self) -> None:
        server = self.fleet.up().item.server
        try:
            models = (await server.client.get("/models", timeout=PROBE_TIMEOUT_S)).json().get("data") or []
            entry = next((m for m in models if m.get("id") == self.spec.target), models[0] if models else {})
            limit = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
            server.window = int(limit) if limit else None
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            pass

    def count_chat_tokens(self, request: ChatRequest) -> int | None:
        """The server's own count where it has a chat tokenizer endpoint (vLLM), else an estimate
        that errs high (a token per three characters), so trimming keeps the request inside the window."""
        payload = chat_payload(request)
        counted = self._loop.run(self.fleet.up().item.tokens.count(payload))
        return counted if counted is not None else length_estimate(payload)

    # --- loglikelihood --------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        """Completions with ``echo`` (``openai_echo``), once the server's echo was found aligned."""
        async def one(at: Endpoint, r: LoglikelihoodRequest) -> Loglikelihood:
            await at.echo.check_alignment()
            return await at.echo.score(*split_whitespace(r.context, r.continuation))

        return self._map(one, requests)

    def cancel(self) -> None:
        """Stop the batches in flight, and send no request of a batch from now on (the session is
        over); a case's own call still goes out."""
        self._cancelled = True  # (read on the loop: the requests of a batch that escaped the cancel below)
        for future in list(self._inflight):
            future.cancel()

    def close(self) -> None:
        for lane in self.fleet.lanes:
            self._loop.run(lane.item.server.close())


One = Callable[[Endpoint, Any], Awaitable[Any]]  # a request on one server


def answered_by(result: Any, server: str, cuts: int) -> Any:
    """A request's result with the server that answered it (and how often its stream was cut before)."""
    if isinstance(result, Reply):
        return replace(result, server=server, stream_cuts=cuts)
    if isinstance(result, Loglikelihood):
        return replace(result, server=server)
    return result


def cut_pause(cuts: int, rng: Any) -> float:
    """The pause before sending a cut stream's request again: random (two processes' requests stop
    meeting) between half and all of 0.1 s doubled per cut so far, at most MAX_CUT_WAIT_S. Never below
    half: the pauses' budget then bounds the re-sends too (from the fifth on, each pause is at least
    MAX_CUT_WAIT_S / 2: at most 25 sends for 20 s)."""
    ceiling = min(MAX_CUT_WAIT_S, 0.1 * 2 ** cuts)
    return rng.uniform(ceiling / 2, ceiling)

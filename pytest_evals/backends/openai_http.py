"""The HTTP side of the OpenAI-compatible backend: one server's httpx client, its streamed events, and
what its failures mean (a transient fault to retry, a context overflow, or a plain error).

The API key comes from ``OPENAI_API_KEY`` and is sent only in the request header: it is never part of
a spec, a record or a message.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from typing import Any, AsyncIterator

import httpx

from .base import BackendError, ContextOverflow, TransientError, parse_retry_after
from .specs import ModelSpec, SpecError

PROBE_TIMEOUT_S = 3.0
BUSY_PROBE_TIMEOUT_S = 30.0  # how long a connected server may take to list its models at start-up
# a server that is not there fails to connect within seconds; one that is busy (llama.cpp serving another
# worker's batch) may take longer to answer, and is not reported as missing
PROBE_TIMEOUT = httpx.Timeout(BUSY_PROBE_TIMEOUT_S, connect=PROBE_TIMEOUT_S)
DEFAULT_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 1.0  # after [DONE], how long the rest of a stream's body is waited for
CONTEXT_LENGTH = re.compile(r"maximum context length is (\d+)")


@functools.cache
def tls(side: str) -> Any:
    """One TLS context for the process's sync clients (the start-up probes, on the main thread) and one
    for its async clients (the event loop's thread): httpx builds one per client otherwise, loading the
    CA bundle each time (0.05-0.2 s a client, at start-up). httpcore sets ALPN on a context per
    connection, so no context is shared across threads. The same settings as httpx's default."""
    return httpx.create_ssl_context()


def headers() -> dict[str, str]:
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


class NoServer(SpecError):
    """No server answers at the URL (as opposed to one that answers but refuses); ``reason`` in a word."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_server(spec: ModelSpec) -> None:
    """At start-up: a server answers its model list at the spec's URL, with this key (a SpecError if not).
    Of a spec naming several servers, one that answers is enough (the others are left out until they
    do, ``fleet``); one that answers but refuses is an error all the same."""
    if spec.servers:
        missing = []
        for url in spec.servers:
            try:
                check_server(spec.at(url))
            except NoServer as exc:
                missing.append(f"{url} ({exc.reason})")
        if len(missing) == len(spec.servers):
            raise NoServer(f"--model {spec.raw}: none of its {len(missing)} servers answers: {', '.join(missing)}; "
                           "start one or fix the URLs after '@'", "none answers")
        return
    url = f"{spec.base_url}/models"
    try:
        response = httpx.get(url, headers=headers(), verify=tls("sync"), timeout=PROBE_TIMEOUT)
    except httpx.HTTPError as exc:
        raise NoServer(
            f"--model {spec.raw}: no OpenAI-compatible server answers at {spec.base_url} "
            f"({type(exc).__name__}); start the server or fix the URL after '@' (or OPENAI_BASE_URL)",
            type(exc).__name__) from None
    if response.status_code in (401, 403):
        raise SpecError(f"--model {spec.raw}: the server refused the API key (HTTP {response.status_code}); set OPENAI_API_KEY")
    if response.status_code >= 400:
        raise SpecError(f"--model {spec.raw}: GET {url} answered HTTP {response.status_code}; is {spec.base_url} an OpenAI-compatible /v1 URL?")


class Server:
    """One server's client (replaced after a failed stream), and its context window once a refusal or
    the spec named it."""

    def __init__(self, spec: ModelSpec, timeout_s: float | None, concurrency: int) -> None:
        self.spec = spec
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self.client = self._new_client()
        self._retired: list[httpx.AsyncClient] = []  # the client replaced last, closed with the server
        self.window: int | None = None

    def _new_client(self) -> httpx.AsyncClient:
        read = self._timeout_s or DEFAULT_TIMEOUT_S
        return httpx.AsyncClient(base_url=self.spec.base_url or "", headers=headers(), verify=tls("async"),
                                 timeout=httpx.Timeout(read, connect=min(read, 10.0)),
                                 limits=httpx.Limits(max_connections=max(10, 2 * self._concurrency)))

    async def renew(self) -> None:
        """A new client for the next requests: a failed stream's connection may still sit in the pool
        although the server closed it. Requests in flight on the old one finish on it; the client retired
        the time before is closed now, so retired clients do not pile up."""
        for old in self._retired:
            await old.aclose()
        self._retired = [self.client]
        self.client = self._new_client()

    async def close(self) -> None:
        for client in (*self._retired, self.client):
            await client.aclose()

    async def post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        """An unstreamed POST; a failed transport or an error status is a :class:`BackendError`."""
        try:
            response = await self.client.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise self.transport_error(path, exc) from exc
        if response.status_code >= 400:
            raise self.http_error(path, response)
        return response

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The events of a streamed POST, each as a dict, until ``[DONE]``."""
        try:
            async with self.client.stream("POST", path, json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self.http_error(path, response)
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
            raise self.transport_error(path, exc) from exc

    def http_error(self, path: str, response: httpx.Response) -> BackendError:
        """429 and 5xx are transient (with the server's Retry-After); other statuses are not."""
        code = response.status_code
        message = f"{self.spec.label}: POST {path} answered HTTP {code}: {response.text[:300]}"
        if code == 400 and ("context_length_exceeded" in response.text or "maximum context length" in response.text):
            window = CONTEXT_LENGTH.search(response.text)
            if window:
                self.window = int(window.group(1))
            return ContextOverflow(message, self.window)
        if code == 429:
            return TransientError(message, "rate_limit", parse_retry_after(response.headers.get("retry-after")))
        if code >= 500:
            return TransientError(message, "server", parse_retry_after(response.headers.get("retry-after")))
        return BackendError(message)

    def transport_error(self, path: str, exc: httpx.HTTPError) -> BackendError:
        kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
        return TransientError(f"{self.spec.label}: {type(exc).__name__} on POST {path}: {exc}", kind)


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

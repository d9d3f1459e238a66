"""A fault-injecting HTTP proxy for tests: it sits in front of a real OpenAI-compatible server on
loopback and, per request, answers 429 with Retry-After, 500/503, stalls, resets the connection,
cuts a stream half-way, or forwards the request untouched.

Faults are drawn from a seeded random generator, so a run's fault sequence is repeatable; GET
requests (the start-up probe) are always forwarded.
"""

from __future__ import annotations

import email.utils
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

FAULTS = ("rate_limit", "rate_limit_date", "server_500", "server_503", "stall", "reset", "cut")


@dataclass
class FaultMix:
    rates: dict[str, float] = field(default_factory=dict)  # fault -> probability per POST
    seed: int = 7
    stall_s: float = 3.0  # the longest a stall lasts; it ends when the client closes the connection
    dead: bool = False  # every POST resets the connection (the upstream is gone)

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS)
        assert not unknown, unknown
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def draw(self) -> str | None:
        if self.dead:
            with self.lock:
                self.counts["reset"] = self.counts.get("reset", 0) + 1
            return "reset"
        with self.lock:
            roll = self.rng.random()
        total = 0.0
        for fault, rate in self.rates.items():
            total += rate
            if roll < total:
                with self.lock:
                    self.counts[fault] = self.counts.get(fault, 0) + 1
                return fault
        return None


class FaultProxy:
    def __init__(self, upstream: str, mix: FaultMix) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT (no /v1)
        self.mix = mix
        self.client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self, b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fault = proxy.mix.draw()
                if fault is None or fault == "cut":
                    proxy.forward(self, body, cut=fault == "cut")
                elif fault.startswith("rate_limit"):
                    when = (email.utils.formatdate(time.time() + 1, usegmt=True) if fault.endswith("date")
                            else "0.2")
                    proxy.reply(self, 429, b'{"error": "rate limited"}', {"Retry-After": when})
                elif fault.startswith("server"):
                    proxy.reply(self, int(fault[-3:]), b'{"error": "upstream trouble"}', {})
                elif fault == "stall":
                    proxy.stall(self)
                elif fault == "reset":
                    proxy.reset(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    # --- answers ------------------------------------------------------------------------------------
    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def stall(self, handler: BaseHTTPRequestHandler) -> None:
        """No answer until the client gives up (its read timeout closes the connection), at most
        ``stall_s``; then a reset. Waiting on the client, not on a fixed time, keeps a stall a timeout
        on a loaded machine, where a client's timeout must be long enough for real answers."""
        deadline = time.monotonic() + self.mix.stall_s
        sock = handler.connection
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and not sock.recv(1, socket.MSG_PEEK):
                break  # the client closed its end
        self.reset(handler)

    @staticmethod
    def reset(handler: BaseHTTPRequestHandler) -> None:
        """Close with a TCP reset and no answer."""
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes, cut: bool = False) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        with self.client.stream(handler.command, self.upstream + handler.path, content=body or None,
                                headers=headers) as response:
            handler.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    handler.send_header(name, value)
            handler.end_headers()
            sent = 0
            for chunk in response.iter_raw():
                if cut and sent >= 2:  # a stream cut half-way: some chunks, then the connection drops
                    self.reset(handler)
                    return
                handler.wfile.write(chunk)
                handler.wfile.flush()
                sent += 1
            if cut:  # a short answer: cut before its end
                self.reset(handler)

"""A fault-injecting HTTP proxy in front of the loopback S3 server (tests only).

Clients are pointed at the proxy (`--s3-endpoint-url`); it forwards each request to the moto
endpoint, except that a set fraction of requests meet a fault instead:

  internal_error  500 InternalError (S3's XML error body)
  slow_down       503 SlowDown (S3's throttling answer)
  reset           the connection is reset (TCP RST) before any answer
  cut_body        the answer's headers and half its body, then a reset (object GETs only)
  slow            the answer arrives `slow_s` seconds late (within the client's read timeout)
  stall           no answer for `stall_s` seconds (beyond the client's read timeout), then a reset

Whether a request meets a fault is drawn with a seeded generator; faults take their kinds in
turn, so every kind occurs once a few requests have failed. One request (method + path) never
meets more than `max_consecutive` faults in a row, so a client with more attempts than that
always gets through and a run's outcome does not depend on luck (`INDEPENDENT` lifts that bound:
every request is drawn on its own). Keys in `deny_keys` are always answered 403 AccessDenied, as
S3 answers a caller without permission. `requests_to` and `faults_on` count per request line
(method and path, query included).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

FAULTS = ("internal_error", "slow_down", "reset", "cut_body", "slow", "stall")
FAILURES = ("internal_error", "slow_down", "reset", "cut_body")  # faults that fail a request at once
INDEPENDENT = 10**9  # max_consecutive for faults drawn independently per request
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass(frozen=True)
class FaultPlan:
    rate: float = 0.0  # fraction of requests that meet a fault
    kinds: tuple[str, ...] = FAULTS
    seed: int = 0
    max_consecutive: int = 3
    slow_s: float = 0.3
    stall_s: float = 2.5
    deny_keys: frozenset[str] = frozenset()  # "bucket/key": always 403 AccessDenied


def _s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>").encode()


class FaultProxy:
    """Start with `start()`; `endpoint` is the URL to give clients; `faults` counts what was injected."""

    def __init__(self, upstream: str, plan: FaultPlan = FaultPlan()):
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.faults: Counter[str] = Counter()
        self.requests_to: Counter[str] = Counter()  # "GET /bucket/key" -> requests
        self.faults_on: Counter[str] = Counter()  # "GET /bucket/key" -> faults injected
        self.requests = 0
        self.denied = 0
        self._lock = threading.Lock()
        self._random = random.Random(plan.seed)
        self._streaks: Counter[str] = Counter()
        self._turn = 0
        self._cuts_owed = 0
        self._server: Optional[ThreadingHTTPServer] = None

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._random = random.Random(plan.seed)
            self._streaks.clear()
            self._turn = 0
            self._cuts_owed = 0
            self.faults.clear()
            self.requests_to.clear()
            self.faults_on.clear()
            self.requests = 0
            self.denied = 0

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    # -- decisions -------------------------------------------------------------------------------
    def decide(self, method: str, path: str) -> Optional[str]:
        """The fault for this request, or None to forward it."""
        request = f"{method} {path}"
        object_get = method == "GET" and "?" not in path and path.count("/") >= 2
        with self._lock:
            self.requests += 1
            self.requests_to[request] += 1
            if self._random.random() >= self.plan.rate or self._streaks[request] >= self.plan.max_consecutive:
                self._streaks[request] = 0
                return None
            kind = self._next_kind()
            if kind == "cut_body" and not object_get:  # owed to the next object GET that meets a fault
                self._cuts_owed += 1
                kind = self._next_kind()
            elif object_get and self._cuts_owed and kind != "cut_body":
                self._cuts_owed -= 1
                kind = "cut_body"
            if kind == "cut_body" and not object_get:
                return None
            self._streaks[request] += 1
            self.faults[kind] += 1
            self.faults_on[request] += 1
            return kind

    def _next_kind(self) -> str:
        kind = self.plan.kinds[self._turn % len(self.plan.kinds)]
        self._turn += 1
        return kind

    def is_denied(self, method: str, path: str) -> bool:
        key = unquote(urlsplit(path).path).lstrip("/")
        if method in ("GET", "HEAD") and key in self.plan.deny_keys:
            with self._lock:
                self.denied += 1
                self.requests += 1
                self.requests_to[f"{method} {path}"] += 1
            return True
        return False


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # resets and timeouts are the point
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        proxy = self.owner
        plan = proxy.plan
        if proxy.is_denied(self.command, self.path):
            return self._answer(403, _s3_error("AccessDenied", "Access Denied"))
        fault = proxy.decide(self.command, self.path)
        if fault == "internal_error":
            return self._answer(500, _s3_error("InternalError", "We encountered an internal error. Please try again."))
        if fault == "slow_down":
            return self._answer(503, _s3_error("SlowDown", "Please reduce your request rate."))
        if fault == "reset":
            return self._reset()
        if fault == "stall":
            time.sleep(plan.stall_s)
            return self._reset()
        if fault == "slow":
            time.sleep(plan.slow_s)
        status, headers, payload = self._forward(body)
        if fault == "cut_body" and len(payload) > 1:
            self._send_head(status, headers, len(payload))
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return self._reset()
        self._send_head(status, headers, len(payload) if self.command != "HEAD" else None)
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.owner.upstream.hostname, self.owner.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.getheaders(), payload
        finally:
            connection.close()

    def _send_head(self, status: int, headers: list[tuple[str, str]], length: Optional[int]) -> None:
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() in _HOP_BY_HOP or (length is not None and name.lower() == "content-length"):
                continue
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(self, status: int, payload: bytes) -> None:
        self._send_head(status, [("Content-Type", "application/xml")], len(payload) if self.command != "HEAD" else 0)
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with a TCP RST: the client sees 'connection reset by peer'."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

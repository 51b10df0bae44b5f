"""The HTTP front end: ``coordinator-stub serve``, the same routes as the seam, behind a bearer token.

HTTP/1.1 keep-alive on a ThreadingHTTPServer. Each response (status line,
headers and body) leaves in ONE socket write with TCP_NODELAY set: the stdlib
writes headers and body separately, and Nagle plus delayed ACKs then cap a
keep-alive client at ~25 requests per second. What an operation can do after
its answer (the store's ``tidy``) waits until the answer is sent. SIGTERM/SIGINT stop accepting,
let in-flight requests finish, close idle connections, and exit 0.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from agent_queue.errors import AQError, ConfigError
from agent_queue.fleet.transport import is_loopback_host
from coordinator_stub.api import MAX_BODY, PREFIX, handle
from coordinator_stub.core import Coordinator

log = logging.getLogger(__name__)
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error"}



def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose an unauthenticated coordinator beyond this host."""
    if not token and not is_loopback_host(host):
        raise ConfigError(f"serve --host {host}: not a loopback address, so AQ_FLEET_TOKEN must be set")


class StubServer(ThreadingHTTPServer):
    """Tracks connections so a graceful stop can close the idle ones and wait for the busy ones."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: 16 clients connecting at once overflowed the default 5 (resets)

    def __init__(self, addr: tuple[str, int], coord: Coordinator, token: str | None, ignore_dry_run: bool) -> None:
        self.coord = coord
        self.token = token
        self.ignore_dry_run = ignore_dry_run
        self.stopping = False
        self.conn_lock = threading.Lock()
        self.conns: dict[socket.socket, bool] = {}  # socket -> busy
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)

    def stop(self) -> None:
        """Stop accepting; wake idle keep-alive connections so their threads end."""
        with self.conn_lock:
            self.stopping = True
            for sock, busy in self.conns.items():
                if not busy:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)
        self.shutdown()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer
    timeout = 120  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.conns[self.connection] = False

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.conns.pop(self.connection, None)
        super().finish()

    def parse_request(self) -> bool:
        with self.server.conn_lock:
            if self.server.stopping:
                self.close_connection = True
                return False
            self.server.conns[self.connection] = True
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if log.isEnabledFor(logging.DEBUG):  # called for every request: format nothing unless it is shown
            log.debug("%s %s", self.address_string(), format % args)  # the request line only: never headers

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            status, body = self._answer(method)
        except Exception:  # a bug must not kill the connection thread silently
            log.exception("internal error on %s %s", method, self.path)
            status, body = 500, {"error": {"code": "internal_error", "message": "internal error (see server log)"}}
        try:
            self._send(status, body)
        finally:
            self._tidy(method)
        with self.server.conn_lock:
            self.server.conns[self.connection] = False
            if self.server.stopping:
                self.close_connection = True

    def _tidy(self, method: str) -> None:
        """The operation's bookkeeping (memory, a few archive files), now that its caller is not waiting."""
        try:
            self.server.coord.tidy()
        except Exception:  # the answer stands (the journal line is durable); the next operation re-reads
            log.exception("internal error after answering %s %s", method, self.path)

    def _answer(self, method: str) -> tuple[int, dict[str, Any] | None]:
        if self.path.split("?")[0].rstrip("/") != PREFIX + "/healthz" and not self._authorized():
            self._drain()
            return 401, _error("unauthorized", "missing or wrong bearer token")
        length = self._length()
        if length is None:
            self.close_connection = True
            return 400, _error("bad_input", "Content-Length: not a valid length")
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread: this connection cannot be reused
            return 413, _error("payload_too_large", f"request body: {length} bytes, at most {MAX_BODY} allowed")
        body = self.rfile.read(length) if length else b""
        return handle(self.server.coord, method, self.path, body, ignore_dry_run=self.server.ignore_dry_run)

    def _authorized(self) -> bool:
        token = self.server.token
        if not token:
            return True
        got = self.headers.get("Authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _length(self) -> int | None:
        text = self.headers.get("Content-Length", "0") or "0"
        try:
            n = int(text)
        except ValueError:
            return None
        return n if n >= 0 else None

    def _drain(self) -> None:
        """Read (and drop) a small unauthorized body so keep-alive stays in sync; close on a large one."""
        n = self._length()
        if n is None or n > MAX_BODY:
            self.close_connection = True
        elif n:
            self.rfile.read(n)

    def _send(self, status: int, body: dict[str, Any] | None) -> None:
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", "Server: coordinator-stub"]
        if status != 204:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if status == 401:
            head.append('WWW-Authenticate: Bearer realm="agent-queue"')
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + payload)  # one write: no Nagle stall
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d", self.command, self.path.split("?")[0], status)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def serve(coord: Coordinator, host: str, port: int, token: str | None, ignore_dry_run: bool,
          announce: Any = None) -> int:
    """Serve until SIGTERM/SIGINT; ``announce(url)`` is called once the socket listens. Returns 0."""
    check_bind(host, token)
    try:
        server = StubServer((host, port), coord, token, ignore_dry_run)
    except OSError as exc:
        raise AQError(f"serve: cannot listen on {host}:{port} ({exc.strerror})") from exc
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if announce is not None:
        announce(f"http://{shown}:{bound_port}")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after in-flight requests", signum)
        threading.Thread(target=server.stop, daemon=True).start()  # shutdown() blocks: not in the handler

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # joins the request threads: in-flight requests finish first
        for s, h in old.items():
            signal.signal(s, h)
    return 0

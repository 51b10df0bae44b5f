"""HTTP/1.1 below the app: uvicorn's h11 protocol, made strict, with deadlines and a connection bound.

What uvicorn's h11 protocol already does: it parses with h11, which refuses a
malformed or conflicting ``Content-Length`` (only ``1*DIGIT``; a list of equal
values is one value, as RFC 9112 section 6.3 says), any ``Transfer-Encoding``
but ``chunked`` (501), a second ``Transfer-Encoding`` header, and decodes chunked
bodies; it bounds a request head (``h11_max_incomplete_event_size``), keeps
connections alive, and closes one idle for ``timeout_keep_alive``.

What this subclass adds, each because a probe on the old server showed the gap:

- ``Content-Length`` together with ``Transfer-Encoding`` is refused (h11 lets
  Transfer-Encoding win; RFC 9112 lets a server refuse, and a proxy in front
  may have framed the message by the other header: request smuggling).
- Every refusal is the contract's JSON error, never uvicorn's text/plain.
- A request head must be complete ``header_timeout_s`` after its first byte (and
  a new connection must start one within that time): uvicorn waits forever for
  a head that trickles in.
- At most ``max_connections`` connections. A new one over the bound closes the
  oldest connection that has not yet made an authorised request; when every
  open connection has, the newcomer gets a JSON 503. So half-sent or
  unauthenticated connections can never hold a slot an authorised factory
  needs, and the process never runs out of descriptors (the bound stays below
  its limit, see ``options.connection_bound``).

The app marks a connection authorised by setting ``AUTHORISED`` in a request's
ASGI scope. The body deadline lives in the app (``fleet.read_body``): it is the
app that reads a body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from coordinator_stub.web.options import ServeOptions

AUTHORISED = "aq.authorised"  # ASGI scope key: this request passed the token check
_CODES = {400: "bad_request", 408: "request_timeout", 431: "headers_too_large", 501: "not_implemented",
          503: "too_many_connections", 505: "http_version_not_supported"}
_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": _CODES.get(status, "bad_request"), "message": message}}).encode()


def error_bytes(status: int, message: str) -> bytes:
    """A complete JSON error response that closes the connection (written raw: h11 may refuse to frame it)."""
    body = error_body(status, message)
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\nserver: coordinator-stub\r\n\r\n")
    return head.encode("ascii") + body


class StrictConnection(h11.Connection):
    """h11, plus the refusals below; keeps the last parse error for the answer's message."""

    last_error: h11.RemoteProtocolError | None = None

    def __init__(self, our_role: type[h11.SERVER], max_head: int) -> None:
        super().__init__(our_role, max_head)
        self.max_head = max_head

    def next_event(self) -> Any:
        try:
            event = super().next_event()
            if type(event) is h11.Request:
                self._check(event)
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise
        return event

    def _check(self, event: h11.Request) -> None:
        names = {name for name, _ in event.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise h11.RemoteProtocolError("Content-Length together with Transfer-Encoding is refused",
                                          error_status_hint=400)
        if event.http_version not in (b"1.0", b"1.1"):
            raise h11.RemoteProtocolError(f"HTTP/{event.http_version.decode('latin-1')} is not supported",
                                          error_status_hint=505)
        # h11 bounds a head only while it is incomplete; one that arrives in one read is measured here.
        size = len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers)
        if size > self.max_head:
            raise h11.RemoteProtocolError(f"request head of {size} bytes, at most {self.max_head} allowed",
                                          error_status_hint=431)


class StrictH11Protocol(H11Protocol):
    """One connection. ``options`` is set on the subclass ``protocol_class`` makes."""

    options = ServeOptions()
    max_connections = options.max_connections

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        size = config.h11_max_incomplete_event_size
        self.conn = self.strict = StrictConnection(h11.SERVER,
                                                   DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if size is None else size)
        self.born = 0.0
        self.authorised = False
        self.head_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ connection bound

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.born = self.loop.time()
        if not self._admitted():
            return
        # Until its first byte, a new connection is idle: it gets the head deadline, not keep-alive's.
        self.timeout_keep_alive_task = self.loop.call_later(self.options.header_timeout_s,
                                                            self.timeout_keep_alive_handler)

    def _admitted(self) -> bool:
        if len(self.connections) <= self.max_connections:
            return True
        unproven = [c for c in self.connections
                    if c is not self and isinstance(c, StrictH11Protocol) and not c.authorised]
        if unproven:
            victim = min(unproven, key=lambda c: c.born)
            victim.transport.abort()  # frees its descriptor now, not after a FIN handshake
            self.connections.discard(victim)
            return True
        self.transport.write(error_bytes(503, f"too many connections (at most {self.max_connections})"))
        self.transport.close()
        return False

    # ------------------------------------------------------------ the head deadline

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def _watch_head(self) -> None:
        """Arm the head deadline at a head's first byte; disarm it once the head is complete."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.options.header_timeout_s, self._head_timed_out)
        elif not waiting:
            self._disarm_head()

    def _disarm_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.write(error_bytes(
                408, f"request head not complete within {self.options.header_timeout_s:g} s"))
            self.transport.close()

    def on_response_complete(self) -> None:
        if self.scope is not None and self.scope.get(AUTHORISED):
            self.authorised = True
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body was read: never wait for the rest
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head()
        super().connection_lost(exc)

    # ------------------------------------------------------------ JSON refusals

    def send_400_response(self, msg: str) -> None:
        err = self.strict.last_error
        status = err.error_status_hint if err is not None else 400
        text = f"malformed HTTP request: {err}" if err is not None and str(err) else f"malformed HTTP request: {msg}"
        try:
            payload = error_body(status, text)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                       (b"connection", b"close"), (b"server", b"coordinator-stub")]
            out = self.conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, "")))
            out = (out or b"") + (self.conn.send(h11.Data(data=payload)) or b"")
            out += self.conn.send(h11.EndOfMessage()) or b""
            self.transport.write(out)
        except h11.LocalProtocolError:  # a response already started (a bad chunk mid-body): just close
            pass
        self.transport.close()


def protocol_class(options: ServeOptions, max_connections: int) -> type[StrictH11Protocol]:
    """The protocol uvicorn instantiates per connection, bound to this server's options."""
    return type("BoundStrictH11Protocol", (StrictH11Protocol,),
                {"options": options, "max_connections": max_connections})

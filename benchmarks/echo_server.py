"""The floor of B2: a minimal stdlib HTTP/1.1 keep-alive server that echoes the request body.

It answers like ``coordinator-stub serve`` does on the wire (one write per
response, TCP_NODELAY) but does no work, so a client's rate against it is the
best this machine, this client and ``http.server`` can do.
Usage: ``python echo_server.py PORT``.
"""

from __future__ import annotations

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0)) or b"{}"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.wfile.write(head.encode("ascii") + body)

    do_GET = do_POST


class Server(ThreadingHTTPServer):
    request_queue_size = 64  # listen(2) backlog: the default 5 resets connections when 16 clients start at once


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Echo)
    server.daemon_threads = True
    server.serve_forever()

#!/usr/bin/env python3
"""A fake HTTP coordinator on 127.0.0.1: scripted answers, every request recorded.

Usage: ``fake_http.py SCRIPT LOG``. Binds a free port, prints it on the first
line of stdout, then serves until killed. Each request is logged as
``{method, path, headers, body, client_port}`` (the port shows keep-alive).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from scripted import pop_step, record


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real coordinator behind a proxy
    server_version = "fake-coordinator"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        srv = self.server
        record(
            srv.log,  # type: ignore[attr-defined]
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": body,
                "client_port": self.client_address[1],
            },
        )
        step = pop_step(srv.script)  # type: ignore[attr-defined]
        if step.get("drop"):
            self.close_connection = True
            return
        if "sleep" in step:
            time.sleep(step["sleep"])
        if "raw" in step:
            self._send(step.get("status", 200), step["raw"].encode("utf-8"), "text/html")
        elif step["status"] == 204:
            self._send(204, b"", None)
        else:
            self._send(step["status"], json.dumps(step.get("body")).encode("utf-8"), "application/json")

    def _send(self, status: int, data: bytes, ctype: str | None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if status != 204:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status != 204:
            self.wfile.write(data)

    do_GET = _handle
    do_POST = _handle

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.script = Path(sys.argv[1])  # type: ignore[attr-defined]
    server.log = Path(sys.argv[2])  # type: ignore[attr-defined]
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

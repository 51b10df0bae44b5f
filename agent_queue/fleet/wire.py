"""What every transport to the coordinator shares: the ``Transport`` protocol, ``Response`` and the wire rules.

Three transports carry exactly the same requests (docs/fleet-api.md): the
command seam (``command_transport``, one child process per request), the same
seam run in this process (``embedded``) and HTTP (``http_transport``).
``transport.make_transport`` picks one. A transport does no retries and no
error mapping: it delivers ``Response(status, body)`` or raises
``TransportError`` ("nothing trustworthy came back"); ``FleetClient`` decides
what a status means and whether to try again. The bearer token never appears
in argv, a child's environment, a repr, a log line or an exception message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent_queue.errors import TransportError

TOKEN_ENV = "AQ_FLEET_TOKEN"  # noqa: S105 (the variable name, not a secret)
# A coordinator answer is a few KiB; anything far larger is garbage, not a response.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# How much of a failed seam's stderr (or exception text) an error message quotes.
STDERR_TAIL = 300


@dataclass(frozen=True)
class Response:
    """One coordinator answer: the HTTP status and the decoded JSON object (None for 204)."""

    status: int
    body: dict[str, Any] | None


class Transport(Protocol):
    """What ``FleetClient`` needs from a transport. Implementations must be thread-safe."""

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Response:
        """Send one request; ``timeout_s`` (if given) caps this call below the transport's own timeout."""
        ...

    def close(self) -> None: ...


def encode_body(body: Mapping[str, Any] | None) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")


def effective_timeout(default: float, override: float | None) -> float:
    """A per-call timeout may shorten the transport's own, never lengthen it."""
    if override is None:
        return default
    return max(0.001, min(default, override))


def check_status(status: Any, where: str) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise TransportError(f"{where}: answer has no valid HTTP status ({str(status)[:40]!r})")
    return status


def parse_seam_answer(out: bytes, where: str) -> Response:
    """The seam's stdout (spawned or embedded): exactly one ``{"status": N, "body": ...}`` object."""
    if len(out) > MAX_RESPONSE_BYTES:
        raise TransportError(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransportError(f"{where}: stdout is not one JSON object ({exc})") from None
    if not isinstance(answer, dict) or "status" not in answer:
        raise TransportError(f'{where}: stdout must be {{"status": N, "body": ...}}')
    status = check_status(answer["status"], where)
    body = answer.get("body")
    if body is not None and not isinstance(body, dict):
        raise TransportError(f"{where}: body must be a JSON object or null")
    return Response(status, body)

"""HTTP to a coordinator (``AQ_FLEET_API``): bearer token, one keep-alive session per thread.

``requests`` is imported only when an ``HttpTransport`` is built, so seam
users and ``agent-queue --help`` never pay for it. Also home of the loopback
rule (a coordinator on this host needs no token), shared with
``coordinator-stub serve``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent_queue.errors import ConfigError, TransportError
from agent_queue.fleet.token_source import TokenSource
from agent_queue.fleet.wire import MAX_RESPONSE_BYTES, Response, check_status, effective_timeout, encode_body

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
HOLD_MARGIN_S = 10.0  # a held claim (waitS) is answered after up to waitS: its read timeout is that much longer


class HttpTransport:
    """HTTP to ``base_url`` with a bearer token; one keep-alive ``requests.Session`` per thread.

    ``requests.Session`` is not documented as thread-safe and the heartbeat
    renews from its own thread, hence one session per thread. Redirects are
    not followed (a coordinator never redirects; following one could carry
    the token elsewhere) and ``~/.netrc`` cannot replace the bearer header.
    Proxy and CA-bundle environment variables are honoured as usual. A 401 is
    retried once when the token's file holds a new token (``TokenSource.reread``:
    rotation without a restart).
    """

    holds_claims = True  # may send waitS (when the coordinator's healthz advertises claimWaitS)

    def __init__(
        self, base_url: str, token: str | TokenSource | None, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        import requests  # lazy: only HTTP users pay for the import

        self._requests = requests
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.__token = token if isinstance(token, TokenSource) else TokenSource(token)
        self._local = threading.local()
        self._sessions: dict[threading.Thread, requests.Session] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpTransport({self.base_url!r}, token={'set' if self.__token.current() else 'unset'})"

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._requests.Session()
            session.headers["Accept"] = "application/json"
            if self.__token.current():
                # Session-level auth: requests then never consults ~/.netrc, which would replace the header.
                session.auth = _Bearer(self.__token)
            self._local.session = session
            with self._lock:
                # One session per thread (a heartbeat renews from its own); a finished job's heartbeat
                # thread is gone, so close its session here instead of keeping one socket per job forever.
                for thread in [t for t in self._sessions if not t.is_alive()]:
                    self._sessions.pop(thread).close()
                self._sessions[threading.current_thread()] = session
        return session

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Response:
        answer = self._request(method, path, body, timeout_s)
        if answer.status == 401 and self.__token.reread():
            answer = self._request(method, path, body, timeout_s)
        return answer

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout_s: float | None
    ) -> Response:
        where = f"{method} {path}"
        held = body.get("waitS") if body is not None else None
        if isinstance(held, (int, float)) and held > 0:  # the answer comes after up to waitS, by design
            read = held + HOLD_MARGIN_S
        else:
            read = effective_timeout(self.read_timeout_s, timeout_s)
        connect = min(self.connect_timeout_s, read)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            resp = self._session().request(
                method,
                self.base_url + path,
                data=encode_body(body) if body is not None else None,
                headers=headers,
                timeout=(connect, read),
                allow_redirects=False,
            )
            content = resp.content
        except self._requests.RequestException as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {self._redact(str(exc))}") from None
        return self._parse(resp.status_code, content, where)

    def _parse(self, status: int, content: bytes, where: str) -> Response:
        status = check_status(status, where)
        if status == 204 or not content:
            return Response(status, None)
        if len(content) > MAX_RESPONSE_BYTES:
            raise TransportError(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            body = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if isinstance(body, dict):
            return Response(status, body)
        if 200 <= status < 300:
            raise TransportError(f"{where}: {status} answer is not a JSON object")
        # An error page from a proxy: the status alone tells the client what happened.
        return Response(status, None)

    def _redact(self, text: str) -> str:
        """Belt and braces: requests' messages carry URLs, not headers, but never risk the token."""
        return self.__token.redact(text[:500])

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        self._local = threading.local()
        for session in sessions:
            session.close()


class _Bearer:
    """A requests auth hook that adds the bearer header (the source's token of the moment); no repr of it."""

    def __init__(self, token: TokenSource) -> None:
        self.__token = token

    def __repr__(self) -> str:
        return "_Bearer(***)"

    def __call__(self, req: Any) -> Any:
        req.headers["Authorization"] = f"Bearer {self.__token.current()}"
        return req


def is_loopback_host(host: str) -> bool:
    """True for names that cannot leave this machine (where no token is required)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def http_transport(url: str, token: str | TokenSource | None, timeout_s: float) -> HttpTransport:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"AQ_FLEET_API: {url[:80]!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError("AQ_FLEET_API: no credentials in the URL; put the token in AQ_FLEET_TOKEN")
    loopback = is_loopback_url(url)
    if isinstance(token, TokenSource) and not token.current():
        token = None
    if not token and not loopback:
        raise ConfigError(
            f"AQ_FLEET_API points at {parts.hostname}: AQ_FLEET_TOKEN is required for a remote coordinator"
        )
    if token and parts.scheme == "http" and not loopback:
        log.warning("AQ_FLEET_API uses plain http to %s: the bearer token travels unencrypted", parts.hostname)
    return HttpTransport(url, token, connect_timeout_s=min(5.0, timeout_s), read_timeout_s=timeout_s)

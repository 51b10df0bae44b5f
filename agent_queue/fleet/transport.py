"""Moving one request to the coordinator and one response back.

Two transports carry exactly the same requests (docs/fleet-api.md): the
command seam (``AQ_FLEET_API_CMD``, one child process per request) and HTTP
(``AQ_FLEET_API``, one keep-alive session per thread). A transport does no
retries and no error mapping: it delivers ``Response(status, body)`` or raises
``TransportError`` ("nothing trustworthy came back"); ``FleetClient`` decides
what a status means and whether to try again. ``requests`` is imported only
when HTTP is actually used, so seam users and ``agent-queue --help`` never pay
for it. The bearer token never appears in argv, a child's environment, a
repr, a log line or an exception message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from agent_queue.errors import ConfigError, TransportError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

TOKEN_ENV = "AQ_FLEET_TOKEN"  # noqa: S105 (the variable name, not a secret)
# A coordinator answer is a few KiB; anything far larger is garbage, not a response.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_STDERR_TAIL = 300


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


def _encode(body: Mapping[str, Any] | None) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")


def _effective_timeout(default: float, override: float | None) -> float:
    if override is None:
        return default
    return max(0.001, min(default, override))


def _check_status(status: Any, where: str) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise TransportError(f"{where}: answer has no valid HTTP status ({str(status)[:40]!r})")
    return status


class CommandTransport:
    """The command seam: ``argv_prefix + [METHOD, PATH]``, JSON body on stdin, one JSON object on stdout.

    Exit status 0 means a response was delivered, whatever its ``status``.
    A non-zero exit, a timeout (the child's whole process group is killed and
    reaped), unparseable stdout or a wrongly shaped answer raise
    ``TransportError``. The child inherits ``env`` (default: this process's
    environment at construction) minus ``AQ_FLEET_TOKEN``.
    """

    def __init__(self, argv_prefix: list[str], timeout_s: float, env: Mapping[str, str] | None = None) -> None:
        if not argv_prefix:
            raise ConfigError("AQ_FLEET_API_CMD: empty command")
        self.argv_prefix = list(argv_prefix)
        self.timeout_s = timeout_s
        source = os.environ if env is None else env
        self._env = {k: v for k, v in source.items() if k != TOKEN_ENV}

    def __repr__(self) -> str:
        return f"CommandTransport({shlex.join(self.argv_prefix)!r}, timeout_s={self.timeout_s})"

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Response:
        where = f"{method} {path} via AQ_FLEET_API_CMD"
        timeout = _effective_timeout(self.timeout_s, timeout_s)
        out, err, rc = self._run([*self.argv_prefix, method, path], _encode(body), timeout, where)
        if rc != 0:
            raise TransportError(f"{where}: command exited {rc}{_stderr_tail(err)}")
        return _parse_seam_answer(out, where)

    def _run(self, argv: list[str], stdin: bytes, timeout: float, where: str) -> tuple[bytes, bytes, int]:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # own process group: a timeout kills the seam and its children
            )
        except OSError as exc:
            raise TransportError(f"{where}: cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TransportError(f"{where}: no answer within {timeout:.3g}s (command killed)") from None
        except BaseException:
            _kill_group(proc)
            raise
        return out, err, proc.returncode

    def close(self) -> None:
        """Nothing to release: every request is its own process."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the seam's whole process group and reap it, so no child outlives a timeout."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    # Pipes close once every holder is dead; communicate() then reaps the child.
    proc.communicate()


def _stderr_tail(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    if not text:
        return ""
    text = " ".join(text.splitlines()[-3:])
    return f": {text[-_STDERR_TAIL:]}"


def _parse_seam_answer(out: bytes, where: str) -> Response:
    if len(out) > MAX_RESPONSE_BYTES:
        raise TransportError(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransportError(f"{where}: stdout is not one JSON object ({exc})") from None
    if not isinstance(answer, dict) or "status" not in answer:
        raise TransportError(f'{where}: stdout must be {{"status": N, "body": ...}}')
    status = _check_status(answer["status"], where)
    body = answer.get("body")
    if body is not None and not isinstance(body, dict):
        raise TransportError(f"{where}: body must be a JSON object or null")
    return Response(status, body)


class HttpTransport:
    """HTTP to ``base_url`` with a bearer token; one keep-alive ``requests.Session`` per thread.

    ``requests.Session`` is not documented as thread-safe and the heartbeat
    renews from its own thread, hence one session per thread. Redirects are
    not followed (a coordinator never redirects; following one could carry
    the token elsewhere) and ``~/.netrc`` cannot replace the bearer header.
    Proxy and CA-bundle environment variables are honoured as usual.
    """

    def __init__(
        self, base_url: str, token: str | None, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        import requests  # lazy: only HTTP users pay for the import

        self._requests = requests
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.__token = token or None
        self._local = threading.local()
        self._sessions: dict[threading.Thread, requests.Session] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpTransport({self.base_url!r}, token={'set' if self.__token else 'unset'})"

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._requests.Session()
            session.headers["Accept"] = "application/json"
            if self.__token:
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
        where = f"{method} {path}"
        read = _effective_timeout(self.read_timeout_s, timeout_s)
        connect = min(self.connect_timeout_s, read)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            resp = self._session().request(
                method,
                self.base_url + path,
                data=_encode(body) if body is not None else None,
                headers=headers,
                timeout=(connect, read),
                allow_redirects=False,
            )
            content = resp.content
        except self._requests.RequestException as exc:
            raise TransportError(f"{where}: {type(exc).__name__}: {self._redact(str(exc))}") from None
        return self._parse(resp.status_code, content, where)

    def _parse(self, status: int, content: bytes, where: str) -> Response:
        status = _check_status(status, where)
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
        text = text[:500]
        return text.replace(self.__token, "***") if self.__token else text

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        self._local = threading.local()
        for session in sessions:
            session.close()


class _Bearer:
    """A requests auth hook that adds the bearer header; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self.__token = token

    def __repr__(self) -> str:
        return "_Bearer(***)"

    def __call__(self, req: Any) -> Any:
        req.headers["Authorization"] = f"Bearer {self.__token}"
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


def make_transport(
    api_cmd: str | None, api_url: str | None, token: str | None, timeout_s: float
) -> Transport:
    """Pick the transport from settings: ``AQ_FLEET_API_CMD`` wins over ``AQ_FLEET_API``.

    HTTP requires a token unless the URL is loopback (a coordinator on this
    host, e.g. ``coordinator-stub serve`` for a one-host fleet). Credentials
    in the URL are refused: the token belongs in ``AQ_FLEET_TOKEN`` only,
    where it is kept out of logs.
    """
    if api_cmd and api_cmd.strip():
        return CommandTransport(_split_cmd(api_cmd), timeout_s)
    if api_url and api_url.strip():
        return _http_transport(api_url.strip(), token, timeout_s)
    raise ConfigError("fleet mode needs AQ_FLEET_API_CMD or AQ_FLEET_API")


def _split_cmd(api_cmd: str) -> list[str]:
    try:
        argv = shlex.split(api_cmd)
    except ValueError as exc:
        raise ConfigError(f"AQ_FLEET_API_CMD: cannot split like a shell ({exc})") from None
    if not argv:
        raise ConfigError("AQ_FLEET_API_CMD: empty command")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"AQ_FLEET_API_CMD: program {argv[0]!r} not found or not executable")
    return argv


def _http_transport(url: str, token: str | None, timeout_s: float) -> HttpTransport:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"AQ_FLEET_API: {url[:80]!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError("AQ_FLEET_API: no credentials in the URL; put the token in AQ_FLEET_TOKEN")
    loopback = is_loopback_url(url)
    if not token and not loopback:
        raise ConfigError(
            f"AQ_FLEET_API points at {parts.hostname}: AQ_FLEET_TOKEN is required for a remote coordinator"
        )
    if token and parts.scheme == "http" and not loopback:
        log.warning("AQ_FLEET_API uses plain http to %s: the bearer token travels unencrypted", parts.hostname)
    return HttpTransport(url, token, connect_timeout_s=min(5.0, timeout_s), read_timeout_s=timeout_s)

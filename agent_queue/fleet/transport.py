"""Moving one request to the coordinator and one response back.

Two transports carry exactly the same requests (docs/fleet-api.md): the
command seam (``AQ_FLEET_API_CMD``, one child process per request) and HTTP
(``AQ_FLEET_API``, one keep-alive session per thread). When the seam command is
this installation's own ``coordinator-stub ... call``, the same stub code runs
in this process instead (``EmbeddedTransport``): a spawn per poll costs ~35 ms
of CPU, the operation itself about one. A transport does no
retries and no error mapping: it delivers ``Response(status, body)`` or raises
``TransportError`` ("nothing trustworthy came back"); ``FleetClient`` decides
what a status means and whether to try again. ``requests`` is imported only
when HTTP is actually used, so seam users and ``agent-queue --help`` never pay
for it. The bearer token never appears in argv, a child's environment, a
repr, a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from agent_queue.errors import AQError, ConfigError, TransportError

if TYPE_CHECKING:
    import requests

    from coordinator_stub.settings import StubSettings

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


class EmbeddedTransport:
    """The command seam to this installation's ``coordinator-stub``, run in this process.

    ``stub_args`` are the stub's own arguments, a call prefix exactly as the
    spawned stub parses it (``coordinator_stub.seam.parse_call_prefix``). Each
    request runs ``coordinator_stub.seam.run_request`` with the same settings
    (flags, else ``AQ_STUB_STATE`` / ``AQ_STUB_LEASE_TTL_S`` from ``env``), the
    same ``JsonStore`` and the same flock(2) on ``DIR/.lock``, so embedded
    daemons, ``coordinator-stub call`` processes and ``serve`` on one state dir
    exclude each other as before. The body crosses as the wire's JSON bytes
    both ways: no object is shared with the coordinator's state. The lock is
    waited for at most the request's timeout; then, and on any unexpected
    exception in the stub code (where the spawned seam would exit non-zero),
    ``TransportError``. A fresh store per request (as per spawned call), so
    threads exclude each other through the flock alone, each with its own deadline.
    The token is never read.
    """

    def __init__(self, stub_args: list[str], timeout_s: float, env: Mapping[str, str] | None = None) -> None:
        from coordinator_stub import seam
        from coordinator_stub.settings import load_settings

        parsed = _call_prefix(stub_args)
        if parsed is None:
            raise ConfigError(f"AQ_FLEET_API_CMD: {shlex.join(stub_args)!r} is not a coordinator-stub call prefix")
        state, lease_ttl, ignore_dry_run = parsed
        source = os.environ if env is None else env
        stub_env = {k: source[k] for k in ("AQ_STUB_STATE", "AQ_STUB_LEASE_TTL_S") if k in source}
        self._seam = seam
        self.timeout_s = timeout_s
        self.settings: StubSettings | None = None
        self._config_error = ""
        try:
            self.settings = load_settings(stub_env, state, lease_ttl, ignore_dry_run)
        except AQError as exc:  # the spawned stub exits 2 on every call: so does every request here
            self._config_error = exc.message

    def __repr__(self) -> str:
        state = str(self.settings.state_dir) if self.settings else None
        return f"EmbeddedTransport(state_dir={state!r}, timeout_s={self.timeout_s})"

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Response:
        where = f"{method} {path} via AQ_FLEET_API_CMD (in-process)"
        timeout = _effective_timeout(self.timeout_s, timeout_s)
        settings = self.settings
        if settings is None:
            raise TransportError(f"{where}: coordinator-stub: {self._config_error}")
        deadline = time.monotonic() + timeout

        from coordinator_stub.stores.locking import LockTimeout, flock

        def lock(path: Path) -> contextlib.AbstractContextManager[object]:
            return flock(path, deadline)

        try:
            status, answer = self._seam.run_request(settings, method, path, _encode(body), lock)
            out = self._seam.encode_answer(status, answer).encode("utf-8")
        except LockTimeout as exc:
            raise TransportError(
                f"{where}: {exc.path} still locked by another process after {timeout:.3g}s"
            ) from None
        except Exception as exc:  # a bug or an OS error in the stub: the spawned seam would exit 1
            log.debug("%s: the embedded coordinator-stub failed", where, exc_info=True)
            text = " ".join(str(exc).split())[:_STDERR_TAIL]
            raise TransportError(f"{where}: coordinator-stub failed: {type(exc).__name__}: {text}") from None
        return _parse_seam_answer(out, where)

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own lock file."""


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

    A seam command naming this installation's own ``coordinator-stub`` with
    nothing but a call prefix runs in this process (``EmbeddedTransport``);
    any other command is spawned per request (``CommandTransport``).
    HTTP requires a token unless the URL is loopback (a coordinator on this
    host, e.g. ``coordinator-stub serve`` for a one-host fleet). Credentials
    in the URL are refused: the token belongs in ``AQ_FLEET_TOKEN`` only,
    where it is kept out of logs.
    """
    if api_cmd and api_cmd.strip():
        argv = _split_cmd(api_cmd)
        stub_args = embedded_stub_args(argv)
        if stub_args is None:
            return CommandTransport(argv, timeout_s)
        transport = EmbeddedTransport(stub_args, timeout_s)
        _announce_embedded(transport)
        return transport
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


def embedded_stub_args(argv: list[str]) -> list[str] | None:
    """The stub's arguments when ``argv`` runs this installation's ``coordinator-stub`` call prefix, else None.

    This installation's stub is the ``coordinator-stub`` script next to
    ``sys.executable`` (same venv), or ``sys.executable -m coordinator_stub``;
    ``argv[0]`` is resolved on PATH as the spawn would. Its arguments must be
    exactly a call prefix (``[--state DIR] [--lease-ttl S] [--ignore-dry-run]
    call [--ignore-dry-run]``). A wrapper, another program, another venv's
    stub or any other argument keeps the spawning transport.
    """
    if not sys.executable:
        return None
    if argv[1:3] == ["-m", "coordinator_stub"] and _is_this_python(argv[0]):
        stub_args = argv[3:]
    elif _same_file(argv[0], os.path.join(os.path.dirname(sys.executable), "coordinator-stub")):
        stub_args = argv[1:]
    else:
        return None
    return stub_args if _call_prefix(stub_args) is not None else None


def _call_prefix(stub_args: list[str]) -> tuple[str | None, str | None, bool] | None:
    """(state, lease_ttl, ignore_dry_run) when ``stub_args`` are a call prefix and nothing more, else None."""
    from coordinator_stub.seam import parse_call_prefix

    parsed = parse_call_prefix(stub_args)
    if parsed is None or parsed[3]:
        return None
    return parsed[0], parsed[1], parsed[2]


def _same_file(program: str, expected: str) -> bool:
    found = shutil.which(program)
    try:
        return found is not None and os.path.samefile(found, expected)
    except OSError:
        return False


def _is_this_python(program: str) -> bool:
    """``program`` is this interpreter: the same file in the same directory.

    A venv's ``bin/python`` is a symlink to the base interpreter: the same file
    as ``/usr/bin/python3``, but that one would not see this venv's packages.
    """
    found = shutil.which(program)
    if found is None or not _same_file(found, sys.executable):
        return False
    here = os.path.realpath(os.path.dirname(os.path.abspath(sys.executable)))
    return os.path.realpath(os.path.dirname(os.path.abspath(found))) == here


_announced: set[str] = set()


def _announce_embedded(transport: EmbeddedTransport) -> None:
    """Say once per process (and state dir) that the seam runs in-process."""
    key = str(transport.settings.state_dir) if transport.settings else ""
    if key not in _announced:
        _announced.add(key)
        log.info("AQ_FLEET_API_CMD names this installation's coordinator-stub: requests run in-process (embedded)"
                 " [%s]", transport)


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

"""The one seam between the factory and the coordinator's code: the embedded (in-process) command seam.

Why a factory embeds the coordinator: with the default file-backed
coordinator (``AQ_FLEET_API_CMD="coordinator-stub --state DIR call"``) every
request would spawn a Python process that costs ~35 ms of CPU for an
operation of about one. When the seam command names this installation's own
``coordinator-stub`` with nothing but a call prefix, the same stub code
(``coordinator_stub.seam.run_request``) runs in this process instead, under
the same flock(2) on ``DIR/.lock``, so embedded daemons, spawned ``call``
processes and ``serve`` on one state dir still exclude each other.

This module is the only place in ``agent_queue`` that imports
``coordinator_stub`` (tests/unit/test_import_layers.py holds it to that), and
it does so lazily, inside the functions that need it: HTTP users, spawned-seam
users and ``agent-queue --help`` never load the coordinator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent_queue.errors import AQError, ConfigError, TransportError
from agent_queue.fleet.wire import STDERR_TAIL, Response, effective_timeout, encode_body, parse_seam_answer

if TYPE_CHECKING:
    from coordinator_stub.settings import StubSettings

log = logging.getLogger(__name__)


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
        timeout = effective_timeout(self.timeout_s, timeout_s)
        settings = self.settings
        if settings is None:
            raise TransportError(f"{where}: coordinator-stub: {self._config_error}")
        deadline = time.monotonic() + timeout

        from coordinator_stub.stores.locking import LockTimeout, flock

        def lock(path: str) -> contextlib.AbstractContextManager[object]:
            return flock(path, deadline)

        try:
            status, answer = self._seam.run_request(settings, method, path, encode_body(body), lock)
            out = self._seam.encode_answer(status, answer).encode("utf-8")
        except LockTimeout as exc:
            raise TransportError(
                f"{where}: {exc.path} still locked by another process after {timeout:.3g}s"
            ) from None
        except Exception as exc:  # a bug or an OS error in the stub: the spawned seam would exit 1
            log.debug("%s: the embedded coordinator-stub failed", where, exc_info=True)
            text = " ".join(str(exc).split())[:STDERR_TAIL]
            raise TransportError(f"{where}: coordinator-stub failed: {type(exc).__name__}: {text}") from None
        return parse_seam_answer(out, where)

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own lock file."""


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


def announce_embedded(transport: EmbeddedTransport) -> None:
    """Say once per process (and state dir) that the seam runs in-process."""
    key = str(transport.settings.state_dir) if transport.settings else ""
    if key not in _announced:
        _announced.add(key)
        log.info("AQ_FLEET_API_CMD names this installation's coordinator-stub: requests run in-process (embedded)"
                 " [%s]", transport)

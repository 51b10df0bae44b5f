"""The command seam (``AQ_FLEET_API_CMD``): one child process per request, JSON in on stdin, JSON out on stdout.

Used for any seam command that is not this installation's own
``coordinator-stub`` call prefix (that one runs in process: ``embedded``).
The child runs in its own process group, so a timeout kills the seam and
everything it started; it never sees ``AQ_FLEET_TOKEN``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from agent_queue.errors import ConfigError, TransportError
from agent_queue.fleet.wire import (
    STDERR_TAIL,
    TOKEN_ENV,
    Response,
    effective_timeout,
    encode_body,
    parse_seam_answer,
)


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
        timeout = effective_timeout(self.timeout_s, timeout_s)
        out, err, rc = self._run([*self.argv_prefix, method, path], encode_body(body), timeout, where)
        if rc != 0:
            raise TransportError(f"{where}: command exited {rc}{_stderr_tail(err)}")
        return parse_seam_answer(out, where)

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
    return f": {text[-STDERR_TAIL:]}"

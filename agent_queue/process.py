"""Run one argv in its own process group, with a timeout and an external abort; always reap it.

The runner owns the policy (shutdown grace, lost lease); this module owns the
mechanics: start the child in a new session so the whole tree can be
signalled, pump its stdout+stderr into the job log (each line time-stamped,
``logpump``), wait on an Event that is
set when the child exits or when the caller wants attention, and kill the
group (TERM, a short grace, then KILL) when told to or at the deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent_queue.logpump import Pump

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
PUMP_DRAIN_S = 5.0  # after the group is gone, how long its output may take to reach the log


class Watch(Protocol):
    """What the waiting loop asks the caller (the runner) while a child runs."""

    wake: threading.Event  # set by anyone who wants ``abort_reason`` re-read now

    def abort_reason(self) -> str | None:
        """Non-None: kill the group now, for this reason."""

    def next_deadline(self) -> float | None:
        """A monotonic time at which ``abort_reason`` may change without ``wake`` being set."""


@dataclass(frozen=True)
class ProcResult:
    exit_code: int | None  # None when the program could not be started
    timed_out: bool = False
    aborted: str | None = None  # the abort reason, when the caller had it killed
    duration_s: float = 0.0
    error: str | None = None  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.aborted is None


def run(
    argv: tuple[str, ...],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    watch: Watch,
    stdin_path: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    raw_path: Path | None = None,
) -> ProcResult:
    """Run ``argv`` to completion, timeout or abort; the group is gone when this returns.

    Its output reaches ``log_path`` with each line stamped (``logpump``), and ``raw_path`` unchanged
    when given; both are complete when this returns, unless a stray that left the group still writes.
    """
    start = time.monotonic()
    try:
        proc = _spawn(argv, cwd, env, stdin_path)
    except OSError as exc:
        return ProcResult(None, error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    assert proc.stdout is not None
    pump = Pump(proc.stdout, log_path, raw_path).start()
    exited = threading.Event()

    def wait_child() -> None:
        proc.wait()
        exited.set()
        watch.wake.set()

    threading.Thread(target=wait_child, name=f"reap-{proc.pid}", daemon=True).start()
    try:
        if on_start is not None:
            on_start(proc.pid)
        timed_out, aborted = _wait(exited, watch, start + timeout_s)
    except BaseException:  # e.g. recording the pid failed (disk full): never leave the tool unwatched
        _kill_group(proc, exited)
        raise
    if timed_out or aborted:
        _kill_group(proc, exited)
    else:
        _signal_group(proc.pid, signal.SIGKILL)  # strays left in the group by a finished tool
    exited.wait()
    if not pump.join(PUMP_DRAIN_S):
        log.warning("a process outside the tool's group still writes to its output; the log keeps taking it")
    return ProcResult(proc.returncode, timed_out, aborted, time.monotonic() - start)


def _spawn(argv: tuple[str, ...], cwd: Path, env: Mapping[str, str],
           stdin_path: Path | None) -> subprocess.Popen[bytes]:
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as inp:
        return subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=inp, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def _wait(exited: threading.Event, watch: Watch, deadline: float) -> tuple[bool, str | None]:
    """Block until the child exits, the deadline passes, or the watch asks for an abort."""
    while True:
        watch.wake.clear()  # clear before checking, so a set() in between is never lost
        if exited.is_set():
            return False, None
        reason = watch.abort_reason()
        if reason is not None:
            return False, reason
        now = time.monotonic()
        if now >= deadline:
            return True, None
        until = min(deadline, watch.next_deadline() or deadline)
        watch.wake.wait(max(0.0, until - now))


def _kill_group(proc: subprocess.Popen[bytes], exited: threading.Event) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    exited.wait(KILL_GRACE_S)
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def identity(pid: int) -> str | None:
    """A fingerprint of a live process (its start time), so a recycled pid is never taken for it.

    Linux reads /proc (exact start tick); elsewhere (macOS) ``ps -o lstart``.
    """
    proc = Path("/proc")
    if proc.is_dir() and (proc / "self" / "stat").exists():
        try:
            return "proc:" + (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    started = out.stdout.strip()
    return f"ps:{started}" if out.returncode == 0 and started else None


def stop_leftover(pid: int, ident: str | None) -> bool:
    """Kill the group of a tool a crashed daemon left running; only if ``pid`` is still that tool."""
    if not ident or identity(pid) != ident:
        return False
    _signal_group(pid, signal.SIGKILL)
    log.warning("killed the tool a crashed daemon left running (process group %d)", pid)
    return True

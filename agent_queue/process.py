"""Run one argv under a shepherd, with a timeout and an external abort; its whole tree ends with it.

The runner owns the policy (shutdown grace, lost lease); this module owns the
mechanics. The child runs under ``shepherd`` (its own session and process group,
Linux: the subreaper of its tree and killed with the daemon; a cgroup v2 of its
own where ``containment`` can make one), so nothing it starts, ``setsid`` or
double-forked, outlives it. Its stdout+stderr are pumped into the job log, each
line time-stamped and each run capped (``logpump``). The wait is on an Event set
when the child exits or when the caller wants attention; a timeout or an abort
asks the shepherd to stop the tree (TERM, a short grace, then KILL), and the
daemon kills the group and the cgroup itself if the shepherd does not finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent_queue import containment
from agent_queue.logpump import DEFAULT_LOG_CAP, Pump, run_budget

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
START_WAIT_S = 30.0  # the shepherd forks as soon as it reads "go"; more is a host in trouble
STOP_WAIT_S = 10.0  # past the grace: the shepherd did not finish, the daemon kills what is left itself
SHEPHERD = Path(__file__).with_name("shepherd.py")
PUMP_DRAIN_S = 1.0  # after the tree is gone, what is still in the pipe is read this long at most


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
    disk_full: str | None = None  # the log could not be written: a factory condition, not the child's doing

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.aborted is None and self.disk_full is None


def run(
    argv: tuple[str, ...],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    watch: Watch,
    stdin_path: Path | None = None,
    on_start: Callable[[int, str | None], None] | None = None,
    raw_path: Path | None = None,
    log_cap: int = DEFAULT_LOG_CAP,
) -> ProcResult:
    """Run ``argv`` to completion, timeout or abort; its whole tree is gone when this returns.

    Its output reaches ``log_path`` with each line stamped, and ``raw_path`` unchanged when given,
    each within this run's share of ``log_cap`` (``logpump``); both are complete when this returns.
    ``on_start(pid, cgroup)`` is called as soon as the child runs (pid: the child's, also its
    process group; cgroup: its scope or None). Until then, and whenever the daemon dies, the
    shepherd ends the tree by itself.
    """
    start = time.monotonic()
    try:
        child = _Child(argv, cwd, stdin_path, watch.wake)
    except OSError as exc:
        return ProcResult(None, error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    child.pump_into(log_path, raw_path, run_budget(log_path, log_cap))
    timed_out, aborted = False, None
    try:
        child.contain()
        child.go(env)
        if child.await_start() and on_start is not None:
            on_start(child.child_pid, None if child.scope is None else str(child.scope))
        timed_out, aborted = _wait(child, watch, start + timeout_s)
    except BaseException:  # e.g. recording the pid failed (disk full): never leave the child unwatched
        child.end(stop=True)
        raise
    child.end(stop=timed_out or aborted is not None)
    duration = time.monotonic() - start
    if child.exec_error is not None:
        return ProcResult(None, error=f"cannot start {argv[0]!r}: {child.exec_error}", duration_s=duration)
    return ProcResult(child.proc.returncode, timed_out, aborted, duration, disk_full=child.pump.disk_full)


class _Child:
    """One shepherd and its tree: the control socket, the log pipe, the cgroup scope."""

    def __init__(self, argv: tuple[str, ...], cwd: Path, stdin_path: Path | None, wake: threading.Event) -> None:
        out_r, out_w = os.pipe()
        self.ctl, theirs = socket.socketpair()
        self._out = os.fdopen(out_r, "rb", buffering=0)
        try:
            with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as inp:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(SHEPHERD), str(theirs.fileno()), str(KILL_GRACE_S), "--",
                     *argv],
                    cwd=cwd, env={}, stdin=inp, stdout=out_w, stderr=subprocess.STDOUT, start_new_session=True,
                    pass_fds=(theirs.fileno(),))
        except BaseException:
            self.ctl.close()
            self._out.close()
            raise
        finally:
            os.close(out_w)
            theirs.close()
        self.pid = self.proc.pid
        self.scope: Path | None = None
        self.exec_error: str | None = None
        self.child_pid = 0
        self._said = b""
        self.exited = threading.Event()
        self.wake = wake
        threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True).start()

    def pump_into(self, log_path: Path, raw_path: Path | None, budget: int) -> None:
        """Start copying the child's output (a log that cannot be opened is reported, the pipe still drained)."""
        self.pump = Pump(self._out, log_path, raw_path, budget=budget)
        self.pump.on_disk_full = self.wake.set
        self.pump.start()

    def _reap(self) -> None:
        self.proc.wait()
        self.exited.set()
        self.wake.set()

    def contain(self) -> None:
        """Put the shepherd in a cgroup of its own (before it starts anything), where cgroups can be used."""
        scope = containment.open_scope()
        if scope is not None and containment.enter(scope, self.pid):
            self.scope = scope

    def go(self, env: Mapping[str, str]) -> None:
        self.ctl.sendall(b"go " + json.dumps(dict(env)).encode() + b"\n")

    def await_start(self) -> bool:
        """Wait until the shepherd says it started the child (True) or could not (False)."""
        self.ctl.settimeout(START_WAIT_S)
        with contextlib.suppress(OSError):
            while b"\n" not in self._said and (data := self.ctl.recv(4096)):
                self._said += data
        self._read_messages()
        return self.child_pid > 0

    def end(self, *, stop: bool) -> None:
        """Stop the tree if asked, wait for the shepherd, then make sure nothing of the tree is left."""
        if stop:
            with contextlib.suppress(OSError):
                self.ctl.sendall(b"stop\n")
        if not self.exited.wait(KILL_GRACE_S + STOP_WAIT_S):
            log.warning("shepherd %d did not finish; killing its tree itself", self.pid)
            self._kill_leftovers(child_group=True)
            self.exited.wait()
        self._kill_leftovers(child_group=False)  # what the shepherd could not reach: normally nothing
        if self.scope is not None:
            containment.remove(self.scope)
        if not self.pump.stop(PUMP_DRAIN_S):
            log.warning("a process outside the tool's tree still writes to its output; the log keeps taking it")
        self.ctl.close()

    def _kill_leftovers(self, *, child_group: bool) -> None:
        """SIGKILL the shepherd's group, its scope, and (only while the shepherd is alive to keep the child's
        pid from being reused) the child's group."""
        self._read_messages()
        _signal_group(self.pid, signal.SIGKILL)
        if child_group and self.child_pid:
            _signal_group(self.child_pid, signal.SIGKILL)
        if self.scope is not None and containment.kill(self.scope):
            log.warning("killed processes left in the cgroup of shepherd %d", self.pid)

    def _read_messages(self) -> None:
        """What the shepherd said so far: ``child <pid>``, ``exec-error <reason>``."""
        self.ctl.setblocking(False)
        with contextlib.suppress(OSError):
            while data := self.ctl.recv(4096):
                self._said += data
        for line in self._said.decode("utf-8", "replace").splitlines():
            word, _, rest = line.partition(" ")
            if word == "child" and rest.strip().isdigit():
                self.child_pid = int(rest)
            elif word == "exec-error":
                self.exec_error = rest.strip() or "unknown error"


def _wait(child: _Child, watch: Watch, deadline: float) -> tuple[bool, str | None]:
    """Block until the child exits, the deadline passes, the log cannot be written, or the watch asks for an abort."""
    while True:
        watch.wake.clear()  # clear before checking, so a set() in between is never lost
        if child.exited.is_set():
            return False, None
        if child.pump.disk_full is not None:
            return False, f"disk full: {child.pump.disk_full}"
        reason = watch.abort_reason()
        if reason is not None:
            return False, reason
        now = time.monotonic()
        if now >= deadline:
            return True, None
        until = min(deadline, watch.next_deadline() or deadline)
        watch.wake.wait(max(0.0, until - now))


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


def stop_leftover(pid: int, ident: str | None, cgroup: str | None = None) -> bool:
    """Kill what a crashed daemon's child left running: its tree (only if ``pid`` is still that
    process) and everything in its cgroup scope (only a scope ``containment`` made)."""
    killed = False
    if pid > 1 and ident and identity(pid) == ident:
        containment.kill_tree(pid)
        log.warning("killed the tree a crashed daemon's child left running (process %d)", pid)
        killed = True
    if containment.is_scope(cgroup):
        scope = Path(str(cgroup))
        if containment.kill(scope):
            log.warning("killed what was left in the cgroup %s of a crashed daemon's child", scope)
            killed = True
        containment.remove(scope)
    return killed

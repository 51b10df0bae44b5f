"""A child's output on its way to the job log: each line time-stamped, capped, and a full disk noticed.

Why not let the child write the log itself: a log of an hour-long agent run is only readable when each
line says when it happened, and a tool that printed 1 GB filled the disk in seconds (every later step of
the daemon then failed). The child writes into a pipe; a pump thread copies what arrives, prefixing
each line start with the time (RFC 3339, UTC), and flushes per read so ``logs --follow`` sees output as
it comes (a progress line without a newline too). Whoever needs the bytes exactly as the tool wrote
them (the agent's JSON result, read by ``assessment``) asks for a raw copy as well.

The cap: one run (tool, verify gate or ship hook) puts at most ``budget`` bytes into each file
(``run_budget``: what the job's ``log_cap`` leaves, at least a small share): the first part as it
comes, the last ``TAIL_MAX`` at most when the child is done (held in memory until then), and between
the two one line saying how many bytes were cut. What is cut is still read: the child never blocks.

A write that fails with ENOSPC/EDQUOT is a factory condition, not the job's fault: the pump gives the
space this run took back (both files are cut to where the run began), says so in one line if it fits,
writes nothing more but keeps draining, and reports ``disk_full`` so the child is stopped and the
attempt given back uncounted (``runner``).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent_queue.errors import is_disk_full
from agent_queue.fsutil import FILE_MODE
from agent_queue.timeutil import to_rfc3339

CHUNK = 64 * 1024
DEFAULT_LOG_CAP = 64 << 20  # bytes a job's log keeps by default (settings: log_cap / AQ_LOG_CAP)
TAIL_MAX = 1 << 20
MIN_RUN_SHARE = 1 << 20  # a later run (verify, next attempt, hook) of a job whose log is full still gets this much


def stamp_lines(data: bytes, at_line_start: bool, stamp: bytes) -> tuple[bytes, bool]:
    """``data`` with ``stamp`` before each line that starts in it; and whether the next byte starts a line."""
    out = bytearray()
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        end = len(data) if nl < 0 else nl + 1
        if at_line_start:
            out += stamp
        out += data[start:end]
        at_line_start = nl >= 0
        start = end
    return bytes(out), at_line_start


def run_budget(log_path: Path, cap: int) -> int:
    """How much of one run's output goes into a log already holding what earlier runs wrote.

    The first run may fill the log up to ``cap``; a later one gets what is left, but at least
    ``min(cap // 4, MIN_RUN_SHARE)``, so a verify gate's verdict stays readable after an attempt
    that printed a flood. A job's log is therefore at most ``cap`` plus that share per later run.
    """
    try:
        used = log_path.stat().st_size
    except OSError:
        used = 0
    return max(cap - used, min(cap // 4, MIN_RUN_SHARE))


class _Capped:
    """One file a run writes to: the head as it comes, the tail at the end, the cut said between them."""

    def __init__(self, path: Path, budget: int | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self.start = os.fstat(self.fd).st_size
        self.tail_limit = 0 if budget is None else min(budget // 2, TAIL_MAX)
        self.head_room = None if budget is None else budget - self.tail_limit
        self.beyond = 0  # bytes past the head; the last ``tail_limit`` of them are kept
        self.tail: deque[bytes] = deque()
        self.tail_size = 0

    def add(self, data: bytes) -> None:
        if self.head_room is not None:
            head, data = data[:self.head_room], data[self.head_room:]
            self.head_room -= len(head)
            self._write(head)
            if data:
                self._keep(data)
            return
        self._write(data)

    def _keep(self, data: bytes) -> None:
        self.beyond += len(data)
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail.popleft())

    def end(self, note: Callable[[int, int], bytes]) -> None:
        """Write the kept tail, after ``note(cut, kept)`` when something was cut."""
        kept = b"".join(self.tail)[-self.tail_limit:] if self.tail_limit else b""
        if self.beyond > len(kept):
            self._write(note(self.beyond - len(kept), len(kept)))
        self._write(kept)
        self.tail.clear()

    def drop(self) -> None:
        """Give back what this run wrote (the disk is full)."""
        self.tail.clear()
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.start)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Pump:
    """Copies ``source`` (the read end of the child's stdout+stderr pipe) into ``log_path``, lines stamped,
    and into ``raw_path`` unchanged when given, each within ``budget`` bytes (None: all); closes ``source``
    at its end."""

    def __init__(self, source: IO[bytes], log_path: Path, raw_path: Path | None = None,
                 clock: Callable[[], float] = time.time, budget: int | None = None) -> None:
        self._source = source
        self._paths = {"log": log_path, "raw": raw_path}
        self._clock = clock
        self._budget = budget
        self.error: str | None = None
        self.disk_full: str | None = None  # why this run's output was dropped
        self.on_disk_full: Callable[[], None] | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"log-pump-{log_path.stem}", daemon=True)

    def start(self) -> Pump:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        """Wait until the pipe is drained (every writer gone); False when a writer outlives ``timeout_s``."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, drain_s: float) -> bool:
        """The child is gone: read what is still there for at most ``drain_s`` (a stray writer that
        escaped may never close the pipe), finish the files; False if that took longer."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        return self.join(drain_s + 5.0)

    def _run(self) -> None:
        sinks: dict[str, _Capped] = {}
        try:
            for name, path in self._paths.items():
                if path is not None:
                    try:
                        sinks[name] = _Capped(path, self._budget)
                    except OSError as exc:
                        self._failed(sinks, name, f"cannot open {path}: {exc}", exc)
            self._copy(sinks)
            for name in list(sinks):
                self._guard(sinks, name, _Capped.end, self._note)
        finally:
            for sink in sinks.values():
                sink.close()
            for fd in (self._stop_r, self._stop_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._source.close()

    def _copy(self, sinks: dict[str, _Capped]) -> None:
        fd = self._source.fileno()
        at_start, drain_until = True, None
        while True:
            wait = None if drain_until is None else max(0.0, drain_until - time.monotonic())
            ready, _, _ = select.select([fd] if drain_until is not None else [fd, self._stop_r], [], [], wait)
            if self._stop_r in ready:
                drain_until = time.monotonic() + 1.0  # what is buffered now, not what a stray writes forever
                continue
            if not ready:
                return
            data = os.read(fd, CHUNK)
            if not data:
                return
            text, at_start = stamp_lines(data, at_start, (to_rfc3339(self._clock()) + " ").encode())
            self._guard(sinks, "log", _Capped.add, text)
            self._guard(sinks, "raw", _Capped.add, data)

    def _guard(self, sinks: dict[str, _Capped], name: str, step: Callable[[_Capped, Any], None], arg: Any) -> None:
        """One write to one file; a failure drops that file (every file of the run, when the disk is full)."""
        if self.disk_full is not None or name not in sinks:
            return
        try:
            step(sinks[name], arg)
        except OSError as exc:
            self._failed(sinks, name, f"cannot write {name}: {exc}", exc)

    def _failed(self, sinks: dict[str, _Capped], name: str, why: str, exc: OSError) -> None:
        if not is_disk_full(exc):
            self.error = why
            dead = sinks.pop(name, None)
            if dead is not None:
                dead.close()
            return
        self.disk_full = f"writing the job log: {exc.strerror or exc}"
        for sink in sinks.values():
            sink.drop()
        if "log" in sinks:
            with contextlib.suppress(OSError):
                os.write(sinks["log"].fd, b"\n[agent-queue: output of this run dropped: disk full]\n")
        if self.on_disk_full is not None:
            self.on_disk_full()

    def _note(self, cut: int, kept: int) -> bytes:
        return (f"\n{to_rfc3339(self._clock())} [agent-queue: {cut} bytes of output cut here: the log keeps the "
                f"first and the last {kept} bytes of this run (log cap)]\n").encode()

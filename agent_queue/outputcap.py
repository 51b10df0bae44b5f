"""A child's output on its way into the job log: capped (head and tail kept), and a full disk noticed.

Why not let the child write the log file itself, as before: a tool that prints
1 GB filled the disk in seconds, and every later step of the daemon failed. The
child now writes into a pipe; ``LogSink`` copies at most ``budget`` bytes of it
into the log: the first ``budget - tail`` bytes as they come (``agent-queue logs
-f`` follows them), the last ``tail`` bytes (kept in memory, at most
``TAIL_MAX``) when the child is done, and between the two one line saying how
many bytes were cut. What is cut is still read, so the child never blocks on a
full pipe.

A write that fails with ENOSPC/EDQUOT is a factory condition, not the job's
fault: the sink drops this run's output from the log (the space it took is given
back), stops writing, keeps draining the pipe, and reports ``disk_full`` so the
child is stopped and the attempt given back uncounted (see ``runner``).
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

from agent_queue.errors import is_disk_full
from agent_queue.fsutil import FILE_MODE

DEFAULT_LOG_CAP = 64 << 20  # bytes a job's log keeps by default (settings: log_cap / AQ_LOG_CAP)
CHUNK = 1 << 16
TAIL_MAX = 1 << 20  # the tail is held in memory until the child is done
MIN_RUN_SHARE = 1 << 20  # a later run (verify, next attempt, hook) of a job whose log is full still gets this much
DRAIN_S = 1.0  # after the child is gone, what a stray writer (macOS) may still add is read this long at most


def run_budget(log_path: Path, cap: int) -> int:
    """How much of one run's output goes into a log already holding what earlier runs wrote.

    The first run may fill the log up to ``cap``; a later one gets what is left, but at least
    ``min(cap // 4, MIN_RUN_SHARE)``, so a verify gate's verdict stays readable after an
    attempt that printed a flood. A job's log is therefore at most ``cap`` plus that share
    per later run (tool, verify and hook runs, bounded by the job's attempts).
    """
    try:
        used = log_path.stat().st_size
    except OSError:
        used = 0
    return max(cap - used, min(cap // 4, MIN_RUN_SHARE))


class LogSink:
    """Copies a pipe into the job log on a thread of its own, within a byte budget (see the module docstring)."""

    def __init__(self, read_fd: int, log_path: Path, budget: int) -> None:
        self.fd = read_fd
        self.tail_limit = min(budget // 2, TAIL_MAX)
        self.head_limit = budget - self.tail_limit
        self.budget = budget
        self.out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self.start = os.fstat(self.out).st_size
        self.written = 0
        self.beyond = 0  # bytes past the head, of which the last ``tail_limit`` are kept
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.disk_full: str | None = None  # why this run's output was dropped (disk full)
        self.on_disk_full: Callable[[], None] | None = None
        self._stopped = False  # a write failed: nothing more is written, the pipe is still drained
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="log-sink", daemon=True)

    def start_pumping(self) -> LogSink:
        self._thread.start()
        return self

    def finish(self) -> None:
        """The child is gone: read what is left (no longer than ``DRAIN_S``), write the tail, close."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join()
        if not self._stopped:
            self._write_tail()
        self.close()

    def close(self) -> None:
        """Close the pipe and the log (``finish`` does, after the tail; alone: the child never ran)."""
        for fd in (self._stop_r, self._stop_w, self.fd, self.out):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def cut(self) -> int:
        return max(0, self.beyond - self.tail_size)

    def _pump(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            if self.fd in ready:
                data = os.read(self.fd, CHUNK)
                if not data:
                    return
                self._take(data)
            elif self._stop_r in ready:
                self._drain()
                return

    def _drain(self) -> None:
        """Writers that outlived the child may never close the pipe: take what is there, then stop."""
        os.set_blocking(self.fd, False)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return
            if not data:
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        if self._stopped:
            return  # drained, never written
        room = self.head_limit - self.written
        if room > 0:
            self._write(data[:room])
            data = data[room:]
        if data:
            self.beyond += len(data)
            self.tail.append(data)
            self.tail_size += len(data)
            while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_limit:
                self.tail_size -= len(self.tail.popleft())

    def _write_tail(self) -> None:
        if not self.tail:
            return
        kept = b"".join(self.tail)[-self.tail_limit:] if self.tail_limit else b""
        if self.beyond > len(kept):
            cut = self.beyond - len(kept)
            self._write(f"\n[agent-queue: {cut} bytes of output cut here: the log keeps the first {self.head_limit} "
                        f"and the last {len(kept)} bytes of this run (log cap)]\n".encode())
        self._write(kept)

    def _write(self, data: bytes) -> None:
        if self._stopped:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.out, view):]
        except OSError as exc:
            self._stopped = True
            if is_disk_full(exc):
                self._full(exc)
            return
        self.written += len(data)

    def _full(self, exc: OSError) -> None:
        """Give back the space this run took and say so in the log (if even that line fits)."""
        self.disk_full = f"writing the job log: {exc.strerror or exc}"
        with contextlib.suppress(OSError):
            os.ftruncate(self.out, self.start)
            os.write(self.out, b"\n[agent-queue: output of this run dropped: disk full]\n")
        if self.on_disk_full is not None:
            self.on_disk_full()

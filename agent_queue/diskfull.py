"""A full disk is a condition of the factory, not a failure of the job that met it.

What it used to do: a tool printed 1 GB, the disk filled, and every later step of
the daemon failed with ENOSPC; the job stayed in running/, the next job never ran
and ``status`` showed a dead pid. Now the runner gives the job back with its attempt
not counted and this ``DiskBackoff`` holds the daemon: no new work until a probe
write (``PROBE_BYTES``, fsynced, in ``<root>/.state``) succeeds, tried after 1, 2,
4 ... seconds (at most ``MAX_S``). The delay keeps growing while jobs keep meeting
a full disk and starts again from ``BASE_S`` once a job ends without it. The
condition is published in ``.state/daemon.json`` (``backoff``) for ``status``; so
that this works on a disk with no byte left, the daemon keeps a small reserve file
(``.state/disk-reserve``, ``RESERVE_BYTES``) that it gives up to write it, and takes
back before it believes there is room again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from agent_queue.control import Control
from agent_queue.errors import is_disk_full
from agent_queue.fsutil import FILE_MODE, read_json, write_json_atomic
from agent_queue.timeutil import to_rfc3339

log = logging.getLogger(__name__)

BASE_S = 1.0
MAX_S = 300.0
PROBE_BYTES = 64 << 10
RESERVE_BYTES = 64 << 10
DAEMON_FILE = Path(".state") / "daemon.json"
RESERVE_FILE = Path(".state") / "disk-reserve"


def has_room(root: Path, size: int = PROBE_BYTES) -> bool:
    """Whether ``size`` bytes can be written (and synced) under ``root`` right now; nothing is left behind."""
    probe = root / ".state" / f".space-probe.{os.getpid()}"
    try:
        return _fill(probe, size)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _fill(path: Path, size: int) -> bool:
    """Write ``size`` bytes to ``path`` and sync them; False when the disk is full."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            data = memoryview(b"\0" * size)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return False
    return True


class DiskBackoff:
    """The daemon's disk-full state: when to try again, and what ``status`` is told."""

    def __init__(self, root: Path, control: Control) -> None:
        self.root = root
        self.control = control
        self.reason: str | None = None  # set while the daemon waits for space
        self._streak = 0
        self._since = 0.0
        self._retry_at = 0.0

    @property
    def active(self) -> bool:
        return self.reason is not None

    def hit(self, reason: str) -> None:
        """The disk was found full: hold new work, for longer each time in a row."""
        self._streak += 1
        now = time.time()
        if self.reason is None:
            self._since = now
        self.reason = reason
        self._retry_at = now + min(MAX_S, BASE_S * 2 ** (self._streak - 1))
        log.error("disk full: no new work until space is back", extra={"error": reason,
                                                                       "retryAt": to_rfc3339(self._retry_at)})
        self._publish()

    def keep_reserve(self) -> None:
        """Hold the reserve (start-up, and once there is room again); never fails the daemon."""
        try:
            self._take_reserve()
        except OSError as exc:
            log.warning("cannot keep the disk reserve %s: %s", self.root / RESERVE_FILE, exc)

    def _take_reserve(self) -> bool:
        path = self.root / RESERVE_FILE
        if path.exists() and path.stat().st_size == RESERVE_BYTES:
            return True
        if _fill(path, RESERVE_BYTES):
            return True
        with contextlib.suppress(OSError):
            path.unlink()  # a partial reserve would only hold space for nothing
        return False

    def wait_for_room(self) -> bool:
        """Idle until the next try, then take the reserve back and probe; True when there is room again."""
        self.control.idle(max(0.0, self._retry_at - time.time()))
        if self.control.stopping:
            return False
        if not self._take_reserve() or not has_room(self.root):
            self.hit(self.reason or "disk full")
            return False
        log.warning("disk space is back: taking work again", extra={"heldS": round(time.time() - self._since, 1)})
        self.reason = None
        self._publish()
        return True

    def job_ended_well(self) -> None:
        """A job ran to an ending without a full disk: the next episode starts with the shortest delay."""
        self._streak = 0

    def _publish(self) -> None:
        """Tell ``status`` (daemon.json); on a disk with no room left the reserve is given up for it."""
        path = self.root / DAEMON_FILE
        try:
            info: dict[str, Any] = read_json(path) if path.exists() else {}
            info.pop("backoff", None)
            if self.reason is not None:
                info["backoff"] = {"reason": self.reason, "since": to_rfc3339(self._since),
                                   "retryAt": to_rfc3339(self._retry_at)}
            try:
                write_json_atomic(path, info)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                with contextlib.suppress(FileNotFoundError):
                    (self.root / RESERVE_FILE).unlink()
                write_json_atomic(path, info)
        except (OSError, ValueError) as exc:
            log.warning("cannot record the disk-full backoff in %s: %s", path, exc)

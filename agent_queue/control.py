"""The daemon's stop/kill/lost flags: what signal handlers, a claim's keepalive and every wait share.

Signals only set flags here: the first SIGTERM/SIGINT stops taking work and
gives the running job ``grace_s`` seconds (then kills its group and gives it
back, attempt not counted); a second one kills it at once. Waiting (idle poll,
running child) is an ``Event.wait`` that any of those flags wakes, so idle CPU
stays near zero. A ``Control`` is the ``process.Watch`` of every child the
runner starts.
"""

from __future__ import annotations

import threading
import time


class Control:
    """Stop/kill/lost flags shared by the signal handlers, the keepalive and the waits (a ``process.Watch``)."""

    def __init__(self, grace_s: float) -> None:
        self.wake = threading.Event()
        self.grace_s = grace_s
        self._stop_at: float | None = None
        self._kill_now = False
        self.lost_reason: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def request_stop(self) -> None:
        """First call: warm shutdown. Second call: cold (kill the running job now)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        else:
            self._kill_now = True
        self.wake.set()

    def lose(self, reason: str) -> None:
        """Called by a claim's keepalive (any thread) when the claim is gone."""
        self.lost_reason = reason
        self.wake.set()

    def abort_reason(self) -> str | None:
        if self.lost_reason is not None:
            return f"claim lost: {self.lost_reason}"
        if self._kill_now:
            return "shutdown: second signal"
        if self._stop_at is not None and time.monotonic() >= self._stop_at + self.grace_s:
            return f"shutdown: grace of {self.grace_s:g}s expired"
        return None

    def next_deadline(self) -> float | None:
        return None if self._stop_at is None else self._stop_at + self.grace_s

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds``, or not at all once stopping; a stop request ends the wait early."""
        self.wake.clear()
        if not self.stopping:
            self.wake.wait(seconds)

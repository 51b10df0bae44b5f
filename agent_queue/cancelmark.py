"""How a local cancel reaches the daemon running the job: a marker file beside the job, watched while it runs.

Why a file and not a signal: the daemon's pid in ``daemon.json`` may be stale (a crash, a reused pid),
and a signal cannot say which job it is about. ``agent-queue cancel`` writes ``cancel.json`` into
``running/<id>/`` (under the queue lock, so the job is still there when it lands); the claim's
keepalive polls for it every ``POLL_S`` and reports the claim lost, so the runner kills the tool group
at once, runs no verify and ships nothing, and the claim then files the job under ``cancelled/``. The
marker moves with the job directory, so it also survives a daemon crash: start-up recovery cancels a
marked job instead of putting it back in the inbox. A composite parent's verify gate is marked the
same way in ``composite/<id>/``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent_queue.fsutil import read_json, write_json_atomic
from agent_queue.timeutil import to_rfc3339

MARK_FILE = "cancel.json"
POLL_S = 0.2
DEFAULT_REASON = "cancelled by the operator"


def mark(folder: Path, reason: str = DEFAULT_REASON) -> None:
    """Ask whoever runs the job in ``folder`` to stop it and end it ``cancelled``."""
    write_json_atomic(folder / MARK_FILE, {"reason": reason, "at": to_rfc3339(time.time())})


def requested(folder: Path) -> str | None:
    """The cancel reason when ``folder`` is marked, else None (an unreadable marker still cancels)."""
    path = folder / MARK_FILE
    if not path.exists():
        return None
    try:
        data: Any = read_json(path)
    except (OSError, ValueError):
        return DEFAULT_REASON
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) and reason else DEFAULT_REASON


@contextlib.contextmanager
def watch(folder: Path, on_cancel: Callable[[str], None], poll_s: float = POLL_S) -> Iterator[None]:
    """Call ``on_cancel(reason)`` once, from a watcher thread, as soon as ``folder`` is marked."""
    stop = threading.Event()

    def run() -> None:
        while True:
            reason = requested(folder)
            if reason is not None:
                on_cancel(f"cancelled: {reason}")
                return
            if stop.wait(poll_s):
                return

    thread = threading.Thread(target=run, name=f"cancel-watch-{folder.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=poll_s + 5.0)

"""``agent-queue logs ID [--follow]``: print a job's log, and with ``--follow`` keep printing until it ends.

A followed log ends with one line in the log's own header style giving the outcome (shipped,
quarantined with its reason, cancelled, fenced, or released to the coordinator for another factory);
the command's exit status says it too: 0 only for shipped. A queued job followed while no daemon runs
on the root gets a note on stderr that it is waiting, instead of a silent wait.

The log of a job is ``logs/<id>.log`` whatever became of the job, so the log of an attempt whose job
was then fenced or released (its files under ``fenced/``, ``released/``) is found too.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent_queue import composite_queue
from agent_queue.errors import NotFound
from agent_queue.fsutil import read_json
from agent_queue.inbox import RESULT_FILE, LocalQueue, State
from agent_queue.jobs import validate_id
from agent_queue.timeutil import to_rfc3339

FINAL_ROLLUP = ("shipped", "quarantined", "cancelled")
DAEMON_CHECK_S = 2.0  # how often a follower of a queued job looks whether a daemon runs
_RECORD_KINDS = ("fenced", "released", "rerun")


@dataclass(frozen=True)
class Ending:
    """How a followed job ended here: ``word`` (shipped | quarantined | cancelled | fenced | released)."""

    word: str
    reason: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.word == "shipped" else 1

    def line(self, job_id: str, at: float) -> str:
        return f"=== {to_rfc3339(at)} {job_id} outcome: {self.word}" + (f": {self.reason}" if self.reason else "")


def stream(queue: LocalQueue, job_id: str, follow: bool, write: Callable[[str], None],
           note: Callable[[str], None], *, poll_s: float = 0.2, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> int:
    """Write the log (and with ``follow`` everything appended until the job ends); the exit status."""
    validate_id(job_id, "job id")
    path = queue.log_path(job_id)
    if not _known(queue, job_id) and not path.exists():
        raise NotFound(f"job {job_id}: not found under {queue.root} (and no log)")
    text = _Tail(path, write)
    text.copy()
    if not follow:
        return 0
    said_waiting, next_look = False, 0.0
    while True:
        ending = _ending(queue, job_id)
        if ending is not None:
            text.copy(final=True)
            write(ending.line(job_id, time.time()) + "\n")
            return ending.exit_code
        if queue.find(job_id) is State.INBOX and clock() >= next_look:
            next_look = clock() + DAEMON_CHECK_S
            idle = not queue.daemon_running()
            if idle and not said_waiting:
                note(f"job {job_id} is queued and no daemon is running on {queue.root}: waiting "
                     "(start one with `agent-queue run`)")
            said_waiting = idle
        sleep(poll_s)
        text.copy()


def _known(queue: LocalQueue, job_id: str) -> bool:
    if queue.find(job_id) is not None or composite_queue.find_parent(queue, job_id) is not None:
        return True
    return any(any((queue.root / kind).glob(f"{job_id}.*")) for kind in _RECORD_KINDS)


def _ending(queue: LocalQueue, job_id: str) -> Ending | None:
    """None while the job may still run here; else how it ended (its newest record when it left)."""
    parent = composite_queue.find_parent(queue, job_id)
    if parent is not None:
        roll = composite_queue.rollup(queue, parent)
        return Ending(roll["state"], roll.get("reason")) if roll["state"] in FINAL_ROLLUP else None
    state = queue.find(job_id)
    if state in (State.INBOX, State.RUNNING):
        return None
    if state is not None:
        word = {State.QUARANTINE: "quarantined"}.get(state, state.value)
        return Ending(word, None if state is State.SHIPPED else _reason(queue.dir(state) / job_id))
    records = [p for kind in _RECORD_KINDS for p in (queue.root / kind).glob(f"{job_id}.*") if p.is_dir()]
    if not records:
        return Ending("gone", "the job is no longer in this queue")
    newest = max(records, key=lambda p: p.stat().st_mtime)
    return Ending(newest.parent.name, _reason(newest))


def _reason(folder: Path) -> str | None:
    try:
        reason = read_json(folder / RESULT_FILE).get("reason")
    except (OSError, ValueError, AttributeError):
        return None
    return str(reason) if reason else None


class _Tail:
    """What was appended to the log since the last look, decoded without splitting a UTF-8 character."""

    def __init__(self, path: Path, write: Callable[[str], None]) -> None:
        self.path, self.write, self.offset = path, write, 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def copy(self, final: bool = False) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        text = self._decoder.decode(data, final=final)
        if text:
            self.write(text)

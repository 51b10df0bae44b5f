"""LocalQueue: the job directories under ``<root>`` and the atomic renames between them.

Each job is one directory ``<state>/<id>/`` holding ``job.json`` (the spec)
and ``result.json`` (attempts, exit codes, durations, reason, timestamps).
The directory's location *is* the job's state; a job changes state only by
``os.rename`` of its directory, so a crash leaves it in exactly one state.
``result.json`` is rewritten (atomically) just before each move. Nothing here
ever deletes a job. A plain ``*.json`` dropped into ``inbox/`` is normalised
into a directory, or moved to ``quarantine/`` with the reason if it is bad.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agent_queue import cancelmark
from agent_queue.errors import Conflict, InvalidJob, NotFound, StateError
from agent_queue.fsutil import ensure_dir, fsync_dir, read_json, write_bytes_atomic, write_json_atomic
from agent_queue.jobs import ID_RE, Job, validate_id
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
# A job's prompt is stored once, beside job.json (which then has no "prompt"): it moves with the job,
# and the tool reads this very file as its stdin or {prompt_file}. An older layout kept the prompt in
# job.json as well; such a job.json is read as it is.
PROMPT_FILE = "prompt.txt"


class State(StrEnum):
    INBOX = "inbox"
    RUNNING = "running"
    SHIPPED = "shipped"
    QUARANTINE = "quarantine"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Entry:
    """A job as stored: its spec, its result record and where it is."""

    job: Job
    result: dict[str, Any]
    state: State
    path: Path

    @property
    def attempts(self) -> int:
        return int(self.result.get("attempts", 0))


class LocalQueue:
    """The state directories of one root, plus work/, logs/ and .state/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.logs = root / "logs"
        self.state_dir = root / ".state"
        self._staging = self.state_dir / "staging"
        self._lock = FileLock(str(self.state_dir / "queue.lock"), mode=0o600)

    def init(self) -> LocalQueue:
        for d in (*(self.dir(s) for s in State), self.work, self.logs, self._staging):
            ensure_dir(d)
        return self

    def dir(self, state: State) -> Path:
        return self.root / state.value

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"

    def daemon_lock(self) -> FileLock:
        """Held by the one daemon of this root for its whole life (``status`` and ``cancel`` probe it)."""
        return FileLock(str(self.state_dir / "daemon.lock"), mode=0o600)

    def daemon_running(self) -> bool:
        """Whether a daemon holds this root now (the lock is tried for an instant, never waited for)."""
        if not self.state_dir.is_dir():
            return False
        lock = self.daemon_lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    # --- adding jobs -------------------------------------------------------

    def enqueue(self, job: Job) -> Entry:
        """Add ``job`` to inbox/; refuses (Conflict) an id already in any state."""
        with self._lock:
            self._refuse_duplicate(job.id)
            return self._place(job, State.INBOX, new_result(job.id, State.INBOX))

    def materialize(self, job: Job, result: dict[str, Any], files: dict[str, Any] | None = None) -> Entry:
        """Put a job obtained elsewhere (e.g. a coordinator claim) straight into running/.

        ``files`` (name: JSON value) are written into the job's directory with it, in the same rename.
        """
        with self._lock:
            self._refuse_duplicate(job.id)
            return self._place(job, State.RUNNING, {**new_result(job.id, State.RUNNING), **result}, files)

    def _refuse_duplicate(self, job_id: str) -> None:
        found = self.find(job_id)
        if found is not None:
            raise Conflict(f"job {job_id}: id already used (in {found.value}/)")

    def _place(self, job: Job, state: State, result: dict[str, Any], files: dict[str, Any] | None = None) -> Entry:
        staged = ensure_dir(self._staging / f"{job.id}.{secrets.token_hex(4)}")
        # Each file is fsynced; the staged directory once for all of them (before the rename publishes it).
        spec = job.to_dict()
        prompt = spec.pop("prompt", None)
        if prompt is not None:
            write_bytes_atomic(staged / PROMPT_FILE, prompt.encode("utf-8", "surrogatepass"), sync_dir=False)
        for name, value in {JOB_FILE: spec, **(files or {}), RESULT_FILE: result}.items():
            write_json_atomic(staged / name, value, sync_dir=False)
        fsync_dir(staged)
        target = self.dir(state) / job.id
        os.rename(staged, target)
        fsync_dir(target.parent)
        return Entry(job, result, state, target)

    # --- reading -----------------------------------------------------------

    def find(self, job_id: str) -> State | None:
        for state in State:
            if (self.dir(state) / job_id).is_dir():
                return state
        return None

    def get(self, job_id: str) -> Entry:
        validate_id(job_id, "job id")
        state = self.find(job_id)
        if state is None:
            raise NotFound(f"job {job_id}: not found under {self.root}")
        return self._load(self.dir(state) / job_id, state)

    def entries(self, state: State) -> list[Entry]:
        entries = []
        for path in sorted(self.dir(state).iterdir()) if self.dir(state).is_dir() else []:
            if path.is_dir() and ID_RE.fullmatch(path.name):
                with contextlib.suppress(StateError):
                    entries.append(self._load(path, state))
        return entries

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for p in self.dir(s).iterdir() if p.is_dir()) if self.dir(s).is_dir() else 0
                for s in State}

    def pending(self, at: float | None = None) -> list[Entry]:
        """Inbox jobs in the order they are taken: highest priority, then oldest.

        A job put back after a tool's usage limit carries ``notBefore`` in its
        result.json and is skipped until then (``at``: now).
        """
        at = time.time() if at is None else at
        ready = [e for e in self.entries(State.INBOX) if not _deferred(e.result, at)]
        return sorted(ready,
                      key=lambda e: (-e.job.priority, str(e.result.get("enqueuedAt", "")), e.job.id))

    def _load(self, path: Path, state: State) -> Entry:
        try:
            job = Job.from_dict(read_spec(path), where=str(path / JOB_FILE))
            result = read_json(path / RESULT_FILE) if (path / RESULT_FILE).exists() else new_result(path.name, state)
        except (OSError, ValueError, InvalidJob) as exc:
            raise StateError(f"{path}: unreadable job ({exc})") from exc
        if job.id != path.name:  # it could never be taken (every move is by id): refuse it loudly
            raise StateError(f"{path}: job.json says id {job.id!r}, but the directory is {path.name!r}")
        return Entry(job, result, state, path)

    # --- moving ------------------------------------------------------------

    def take(self, job_id: str) -> Entry | None:
        """inbox -> running for one job; None if someone else moved it first."""
        try:
            return self.move(job_id, State.INBOX, State.RUNNING, {})
        except (NotFound, FileNotFoundError):
            return None

    def retire(self, job_id: str, src: State, kind: str, label: str | None = None,
               update: dict[str, Any] | None = None) -> Path:
        """Move ``<src>/<id>`` out of the queue to a record dir: ``<root>/<kind>/<id>.<label>/``
        (or ``<id>.<n>/``), a numbered suffix where the name is taken. Nothing is deleted."""
        with self._lock:
            path = self.dir(src) / job_id
            if update is not None:
                result = read_json(path / RESULT_FILE) if (path / RESULT_FILE).exists() else {}
                write_json_atomic(path / RESULT_FILE, {**result, **update, "state": kind, "updatedAt": now()})
            parent = ensure_dir(self.root / kind)
            target = _free_record_name(parent, job_id, label)
            os.rename(path, target)
            fsync_dir(parent)
            fsync_dir(path.parent)
            return target

    def move(self, job_id: str, src: State, dst: State, update: dict[str, Any] | None) -> Entry:
        """Record ``update`` in result.json, then rename the job's directory from ``src`` to ``dst``.

        ``update`` None: the rename alone (a full disk has no room for a new result.json).
        """
        with self._lock:
            path = self.dir(src) / job_id
            if not path.is_dir():
                raise NotFound(f"job {job_id}: not in {src.value}/")
            entry = self._load(path, src)
            result = {**entry.result, **(update or {}), "state": dst.value, "updatedAt": now()}
            if update is not None:
                write_json_atomic(path / RESULT_FILE, result)
            target = self.dir(dst) / job_id
            os.rename(path, target)
            fsync_dir(target.parent)
            fsync_dir(path.parent)
            return Entry(entry.job, result, dst, target)

    def update(self, job_id: str, state: State, update: dict[str, Any]) -> None:
        """Rewrite result.json in place (e.g. the running tool's pid)."""
        path = self.dir(state) / job_id / RESULT_FILE
        with self._lock:
            write_json_atomic(path, {**read_json(path), **update, "updatedAt": now()})

    def cancel(self, job_id: str, reason: str) -> State:
        """Where the job was when asked: an inbox job is moved to cancelled/ at once, a running one is
        marked (``cancelmark``) for the daemon running it; any other state is left alone."""
        validate_id(job_id, "job id")
        with self._lock:
            state = self.find(job_id)
            if state is None:
                raise NotFound(f"job {job_id}: not found under {self.root}")
            if state is State.INBOX:
                self.move(job_id, State.INBOX, State.CANCELLED,
                          {"reason": f"cancelled: {reason}", "cancelledAt": now(), "notBefore": None})
            elif state is State.RUNNING:
                cancelmark.mark(self.dir(State.RUNNING) / job_id, reason)
            return state

    def requeue(self, job_id: str) -> Entry:
        """quarantine -> inbox with attempts reset; any other state is refused."""
        entry = self.get(job_id)
        if entry.state is not State.QUARANTINE:
            raise Conflict(f"job {job_id}: is in {entry.state.value}/, only a quarantined job can be requeued")
        return self.move(job_id, State.QUARANTINE, State.INBOX,
                         {"attempts": 0, "reason": None, "requeuedAt": now(), "enqueuedAt": now(),
                          "round": int(entry.result.get("round") or 1) + 1})

    # --- loose files dropped into inbox/ -------------------------------------

    def normalise_inbox(self) -> list[str]:
        """Turn each ``inbox/*.json`` into a job directory, or quarantine it with the reason."""
        ids = []
        for path in sorted(self.dir(State.INBOX).iterdir()):
            if path.is_file() and path.suffix == ".json":
                ids.append(self._adopt(path))
            elif path.is_dir() and not path.name.startswith("."):
                ids.extend(self._check_dir(path))
        return ids

    def _check_dir(self, path: Path) -> list[str]:
        """A job directory that cannot be read (bad name, corrupt job.json) is quarantined, never skipped."""
        if ID_RE.fullmatch(path.name):
            try:
                self._load(path, State.INBOX)
                return []
            except StateError as exc:
                reason = exc.message
        else:
            reason = f"{path}: {path.name[:40]!r} is not a valid job id"
        with self._lock:
            stem = path.name if ID_RE.fullmatch(path.name) else "bad-dir"
            job_id = stem if not (self.dir(State.QUARANTINE) / stem).exists() else f"{stem}-{secrets.token_hex(3)}"
            if (path / RESULT_FILE).exists():
                os.rename(path / RESULT_FILE, path / "result.unreadable.json")  # kept, never deleted
            write_json_atomic(path / RESULT_FILE, {**new_result(job_id, State.QUARANTINE), "reason": reason})
            target = self.dir(State.QUARANTINE) / job_id
            os.rename(path, target)
            fsync_dir(target.parent)
            fsync_dir(path.parent)
        log.warning("inbox job %s quarantined: %s", path.name, reason, extra={"job_id": job_id})
        return [job_id]

    def _adopt(self, path: Path) -> str:
        with self._lock:
            try:
                job = Job.from_dict(_read_loose(path), where=f"{path}")
                if job.kind == "composite":
                    raise InvalidJob(f"{path}: a composite job is added with `agent-queue enqueue FILE`")
                self._refuse_duplicate(job.id)
            except (InvalidJob, Conflict) as exc:
                return self._quarantine_file(path, exc.message)
            entry = self._place(job, State.INBOX, new_result(job.id, State.INBOX))
            os.rename(path, entry.path / "original.json")
            log.info("inbox file %s accepted as job %s", path.name, job.id, extra={"job_id": job.id})
            return job.id

    def _quarantine_file(self, path: Path, reason: str) -> str:
        stem = path.stem if ID_RE.fullmatch(path.stem) and ".." not in path.stem else "bad-file"
        job_id = stem
        while self.find(job_id) is not None:
            job_id = f"{stem}-{secrets.token_hex(3)}"
        staged = ensure_dir(self._staging / f"{job_id}.{secrets.token_hex(4)}")
        write_json_atomic(staged / RESULT_FILE, {**new_result(job_id, State.QUARANTINE), "reason": reason,
                                                 "sourceFile": path.name})
        os.rename(path, staged / path.name)
        target = self.dir(State.QUARANTINE) / job_id
        os.rename(staged, target)
        fsync_dir(target.parent)
        log.warning("inbox file %s quarantined: %s", path.name, reason, extra={"job_id": job_id})
        return job_id

    def iter_all(self) -> Iterator[Entry]:
        for state in State:
            yield from self.entries(state)


def read_spec(folder: Path, with_prompt: bool = True) -> Any:
    """A stored job's spec (``job.json``), its prompt put back from ``prompt.txt`` unless ``with_prompt`` is False."""
    spec = read_json(folder / JOB_FILE)
    if with_prompt and isinstance(spec, dict) and "prompt" not in spec and (folder / PROMPT_FILE).is_file():
        spec["prompt"] = (folder / PROMPT_FILE).read_bytes().decode("utf-8", "surrogatepass")
    return spec


def _deferred(result: dict[str, Any], at: float) -> bool:
    stamp = result.get("notBefore")
    if not isinstance(stamp, str):
        return False
    try:
        return parse_rfc3339(stamp) > at
    except ValueError:
        return False  # an unreadable stamp must not park the job forever


def decode_spec(text: str, where: str) -> Any:
    """JSON text -> object, or InvalidJob naming where and the line/column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"{where}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InvalidJob(f"{where}: JSON nested too deeply") from None


def _read_loose(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:  # unreadable (permissions, I/O error): quarantined, never a stuck queue
        raise InvalidJob(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return decode_spec(text, str(path))


def _free_record_name(parent: Path, job_id: str, label: str | None) -> Path:
    """``<id>.<label>`` if free, else ``<id>.<label>.2``, ``.3``...; without a label ``<id>.1``, ``.2``..."""
    if label is not None and not (parent / f"{job_id}.{label}").exists():
        return parent / f"{job_id}.{label}"
    base, n = (f"{job_id}.{label}", 2) if label is not None else (job_id, 1)
    while (parent / f"{base}.{n}").exists():
        n += 1
    return parent / f"{base}.{n}"


def now() -> str:
    return to_rfc3339(time.time())


def new_result(job_id: str, state: State) -> dict[str, Any]:
    stamp = now()
    return {"jobId": job_id, "state": state.value, "attempts": 0, "history": [], "reason": None,
            "enqueuedAt": stamp, "updatedAt": stamp}

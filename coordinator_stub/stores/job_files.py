"""The file store's per-job files: specs of live jobs, the write-once archive, and its history.

::

    DIR/jobs/<id>.json                 full spec of a queued or leased job, written once at enqueue (durable)
    DIR/archive/<id>.json              a terminal job or composite parent (its current version, full spec inside)
    DIR/archive/history/<id>.<n>.json  superseded versions (a re-run job, a parent after its verify): kept

A file name is the job id with upper-case letters escaped (``archive_name``),
so ids never collide on a case-insensitive disk (macOS).
"""

from __future__ import annotations

import os

from agent_queue import ctxlib
from agent_queue.errors import StateError
from agent_queue.fsutil import ensure_dir, fsync_dir, is_safe_name, write_bytes_atomic, write_json_atomic
from coordinator_stub.stores.journal import encode, read_json_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

def archive_name(job_id: str) -> str | None:
    """File name of a job id (None: no such id can exist).

    Upper-case letters are escaped so case-insensitive disks (macOS) never collide. Only safe
    names can be stored (job ids are validated at enqueue); anything else cannot exist.
    """
    if ".." in job_id or not is_safe_name(job_id):
        return None
    if job_id.lower() == job_id:  # the common case: nothing to escape
        return job_id + ".json"
    return "".join(f"^{c.lower()}" if c.isupper() else c for c in job_id) + ".json"


def archive_id(name: str) -> str:
    """The job id of an archive file name (the inverse of ``archive_name``)."""
    stem, out, i = name.removesuffix(".json"), [], 0
    while i < len(stem):
        if stem[i] == "^" and i + 1 < len(stem):
            out.append(stem[i + 1].upper())
            i += 2
        else:
            out.append(stem[i])
            i += 1
    return "".join(out)


class JobFiles:
    """The three directories and what is read and written in them. No locking here: the store's."""

    def __init__(self, root: str) -> None:
        # Strings, not Paths: a path is built on every operation, where building a Path costs more than the read,
        # and a seam call would pay pathlib's import (~3.5 ms, B1).
        self.jobs_dir = os.path.join(root, "jobs")
        self.archive_dir = os.path.join(root, "archive")
        self.history_dir = os.path.join(self.archive_dir, "history")
        self._jobs_prefix, self._archive_prefix = os.path.join(self.jobs_dir, ""), os.path.join(self.archive_dir, "")

    def ensure_dirs(self) -> None:
        ensure_dir(self.archive_dir)
        ensure_dir(self.jobs_dir)

    # ------------------------------------------------------------ specs of live jobs

    def spec_file(self, job_id: str) -> str:
        return _file(self._jobs_prefix, job_id, "spec")

    def write_specs(self, specs: dict[str, dict[str, Any]]) -> None:
        """Durable before the journal line that refers to them: never a hot record without its spec."""
        for job_id, spec in specs.items():
            write_bytes_atomic(self.spec_file(job_id), encode(spec), sync_dir=False)
        if specs:
            fsync_dir(self.jobs_dir)  # once for all of them (a composite's children)

    def remove_spec(self, job_id: str) -> None:
        """No fsync of its own: a leftover spec file is harmless (never read)."""
        with ctxlib.suppress(FileNotFoundError):
            os.unlink(self.spec_file(job_id))

    # ------------------------------------------------------------ the archive

    def archive_file(self, job_id: str) -> str:
        return _file(self._archive_prefix, job_id, "archive")

    def read_archived(self, job_id: str) -> dict[str, Any] | None:
        """The archived record of ``job_id`` from its file; None when there is none (an error is never absence)."""
        name = archive_name(job_id)
        if name is None:
            return None
        path = self._archive_prefix + name
        try:
            rec = read_json_file(path)
        except FileNotFoundError:
            return None
        if not isinstance(rec, dict) or rec.get("spec", {}).get("id") != job_id:
            raise StateError(f"{path}: not an archived record of {job_id!r}")
        return rec

    def write_archived(self, job_id: str, rec: dict[str, Any] | None) -> None:
        """Write (None: remove) the current version's file, without a sync: the checkpoint makes it durable."""
        if rec is None:
            with ctxlib.suppress(FileNotFoundError):
                os.unlink(self.archive_file(job_id))
        else:
            write_bytes_atomic(self.archive_file(job_id), encode(rec), durable=False)

    def iter_files(self, skip: set[str]) -> Iterator[dict[str, Any]]:
        """Every archived record whose file exists, except the ids in ``skip`` (the journal's are newer)."""
        try:
            names = sorted(name for name in os.listdir(self.archive_dir) if name.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            if archive_id(name) in skip:  # the journal's version wins; the file may be torn
                continue
            rec = read_json_file(self._archive_prefix + name)
            if isinstance(rec, dict) and rec.get("spec", {}).get("id") not in skip:
                yield rec

    def keep_history(self, job_id: str, rec: dict[str, Any]) -> None:
        """Copy ``rec`` (the current version of ``job_id``) to the first free ``history/<id>.<n>.json``, durably."""
        name = archive_name(job_id)
        ensure_dir(self.history_dir)
        stem = str(name)[: -len(".json")]
        n = 1
        while os.path.exists(os.path.join(self.history_dir, f"{stem}.{n}.json")):
            n += 1
        write_json_atomic(os.path.join(self.history_dir, f"{stem}.{n}.json"), rec)


def _file(prefix: str, job_id: str, what: str) -> str:
    name = archive_name(job_id)
    if name is None:
        raise StateError(f"{what}: {job_id[:40]!r} is not a storable id")
    return prefix + name

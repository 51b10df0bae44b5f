"""Crash-safe file primitives shared by the local queue and the coordinator store.

A state file is either the old version or the new one, never half of each:
write a temp file in the same directory, fsync it, rename it over the target,
then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import os

from agent_queue import cjson, ctxlib

# typing, tempfile and pathlib stay unimported here: the coordinator's command seam
# pays every import on every call (a fresh process per operation; pathlib and the
# urllib.parse it imports are ~3.5 ms of it, B1). Paths are taken as str or Path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    StrPath = str | os.PathLike[str]
    P = TypeVar("P", bound=StrPath)

FILE_MODE = 0o600
DIR_MODE = 0o700
_NAME_PUNCTUATION = str.maketrans("", "", "._-")


def is_safe_name(text: str, max_len: int = 128) -> bool:
    """Whether ``text`` is a name that is safe as one path component: ``[A-Za-z0-9][A-Za-z0-9._-]{0,max_len-1}``.

    Checked with str methods rather than that regex: ``re`` is ~8 ms of start-up,
    over half of a bare ``python -c pass``, and the coordinator's command seam checks
    names in a fresh process per operation (B1). tests/unit/test_safe_name.py holds
    the two to the same answers.
    """
    # isalnum() of an ASCII string: letters and digits only; the first character is one of them.
    return (0 < len(text) <= max_len and text.isascii() and text[0].isalnum()
            and text.translate(_NAME_PUNCTUATION).isalnum())


def ensure_dir(path: P, mode: int = DIR_MODE) -> P:
    """Create ``path`` (and parents) with private permissions if missing; returns ``path``.

    ``makedirs`` gives the parents the default mode (0755 under a usual
    umask), so each missing ancestor is created here with ``mode`` too.
    """
    missing = []
    given: StrPath = path
    cur = os.path.abspath(given)
    while not os.path.exists(cur) and cur != os.path.dirname(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        with ctxlib.suppress(FileExistsError):
            os.mkdir(d, mode)
    if not os.path.isdir(path):
        os.mkdir(path, mode)  # raises the right error (e.g. a file is in the way)
    return path


def fsync_dir(path: StrPath) -> None:
    """Persist a rename/creation in ``path``; a no-op where dirs cannot be opened or synced.

    Some filesystems (and macOS for dirs) refuse; the rename still happened.
    """
    _fsync_path(path, tolerate_errors=True)


def fsync_file(path: StrPath) -> None:
    """Persist the data of an existing file written without a sync (a missing file is fine)."""
    _fsync_path(path, tolerate_errors=False)


def _fsync_path(path: StrPath, tolerate_errors: bool) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError:
        if tolerate_errors:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not tolerate_errors:
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(
    path: StrPath, data: bytes, mode: int = FILE_MODE, sync_dir: bool = True, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``sync_dir=False``: the caller fsyncs the directory itself, once for several files.
    ``durable=False``: atomic but no fsync at all, for a file a write-ahead log can rebuild
    after a power cut (the coordinator's archive between checkpoints).
    """
    # A private unique name by hand, not tempfile.mkstemp: importing tempfile (random, shutil,
    # bz2, lzma) costs ~5 ms, a tenth of a coordinator seam call (benchmark B1).
    parent, name = os.path.split(os.fspath(path))
    tmp = os.path.join(parent, f".{name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with ctxlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir and durable:
        fsync_dir(parent or ".")


def dumps(obj: Any) -> str:
    """The one JSON encoding of state: stable key order, readable, UTF-8."""
    import json  # here: indent needs json's own encoder, and json imports re (cjson's docstring says why not)

    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)


def write_json_atomic(path: StrPath, obj: Any, mode: int = FILE_MODE, sync_dir: bool = True) -> None:
    write_bytes_atomic(path, (dumps(obj) + "\n").encode("utf-8"), mode, sync_dir)


def read_json(path: StrPath) -> Any:
    with open(path, encoding="utf-8") as fh:
        return cjson.loads(fh.read())


def append_line(path: StrPath, line: str | bytes, mode: int = FILE_MODE, durable: bool = True) -> os.stat_result:
    """Append one line, durably unless told (O_APPEND keeps concurrent writers' lines whole).

    Returns the file's status right after the write, so a caller that tracks the
    file's identity needs no second ``stat`` (the coordinator's journal, B2).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        data = memoryview(raw.rstrip(b"\n") + b"\n")
        while data:  # a short write (full disk, some network file systems) must not pass as whole
            data = data[os.write(fd, data):]
        if durable:
            _datasync(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _datasync(fd: int) -> None:
    """fdatasync(2) where it exists (Linux): the data and the size, not the timestamps; fsync elsewhere (macOS)."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)

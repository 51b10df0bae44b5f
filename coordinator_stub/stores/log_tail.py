"""An append-only JSON-lines file read as it grows: the file store's audit logs as ``serve`` reads them.

Each ``read`` returns only what was appended since the last one; at start-up
the last ``backfill_bytes`` are history (``live`` False), what comes after is
live. A file replaced or truncated is read again from its start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class LogTail:
    """New complete lines of one append-only JSON-lines file, from where the last read stopped."""

    def __init__(self, path: Path, backfill_bytes: int) -> None:
        self.path = path
        self._ident: tuple[int, int] | None = None
        self._offset = 0
        self._live_from = 0
        self._partial = b""
        self._skip_to_line = False  # a backfill starts mid-file: its first (partial) line is dropped
        self._start(backfill_bytes)

    def _start(self, backfill_bytes: int) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return  # nothing yet: everything that comes is live
        self._ident = (st.st_dev, st.st_ino)
        self._live_from = st.st_size
        self._offset = max(0, st.st_size - backfill_bytes)
        self._skip_to_line = 0 < self._offset < st.st_size  # mid-file: the window's first line is partial

    def read(self) -> Iterator[tuple[Event, bool]]:
        """(record, live) for each complete line appended since the last call; unreadable lines are skipped."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if self._ident != (st.st_dev, st.st_ino) or st.st_size < self._offset:  # a new or truncated file
                if self._ident is not None:
                    self._offset, self._live_from, self._partial, self._skip_to_line = 0, 0, b"", False
                self._ident = (st.st_dev, st.st_ino)
            data = os.pread(fd, max(0, st.st_size - self._offset), self._offset)
        finally:
            os.close(fd)
        start = self._offset - len(self._partial)
        self._offset += len(data)
        data = self._partial + data
        if self._skip_to_line:
            cut = data.find(b"\n") + 1
            if cut == 0:
                self._partial = data
                return
            data, start, self._skip_to_line = data[cut:], start + cut, False
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            live = start >= self._live_from
            start += len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record, live

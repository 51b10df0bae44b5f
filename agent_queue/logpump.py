"""A child's output on its way to the job log: every line gets the time it arrived (RFC 3339, UTC).

Why not let the child write the log itself: a log of an hour-long agent run is only readable when each
line says when it happened. The child writes into a pipe; a pump thread copies what arrives, prefixing
each line start, and flushes per read so ``logs --follow`` sees output as it comes (a progress line
without a newline too). Whoever needs the bytes exactly as the tool wrote them (the agent's JSON
result, read by ``assessment``) asks for a raw copy as well.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from agent_queue.timeutil import to_rfc3339

CHUNK = 64 * 1024


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


class Pump:
    """Copies ``source`` (the read end of the child's stdout+stderr pipe) into ``log_path``, lines stamped,
    and into ``raw_path`` unchanged when given; closes ``source`` at its end."""

    def __init__(self, source: IO[bytes], log_path: Path, raw_path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._log_path = log_path
        self._raw_path = raw_path
        self._clock = clock
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"log-pump-{log_path.stem}", daemon=True)

    def start(self) -> Pump:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        """Wait until the pipe is drained (every writer gone); False when a writer outlives ``timeout_s``
        (a stray that left the tool's process group): its lines keep arriving in the background."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        fd = self._source.fileno()
        at_start = True
        sinks: dict[str, BinaryIO] = {}
        try:
            for name, path in (("log", self._log_path), ("raw", self._raw_path)):
                if path is not None:
                    try:
                        sinks[name] = open(path, "ab")  # noqa: SIM115 - closed below, after the pipe is drained
                    except OSError as exc:
                        self.error = f"cannot open {path}: {exc}"
            while data := os.read(fd, CHUNK):
                text, at_start = stamp_lines(data, at_start, (to_rfc3339(self._clock()) + " ").encode())
                self._write(sinks, {"log": text, "raw": data})
        finally:
            for sink in sinks.values():
                with contextlib.suppress(OSError):
                    sink.close()
            self._source.close()

    def _write(self, sinks: dict[str, BinaryIO], parts: dict[str, bytes]) -> None:
        """A sink that fails (a full disk) is dropped; the pipe is drained all the same, so the tool never blocks."""
        for name, sink in list(sinks.items()):
            try:
                sink.write(parts[name])
                sink.flush()
            except OSError as exc:
                self.error = f"cannot write {name}: {exc}"
                del sinks[name]
                with contextlib.suppress(OSError):
                    sink.close()

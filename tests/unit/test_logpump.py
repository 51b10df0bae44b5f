"""The job log's time stamps: every line that starts gets one, whatever the chunks the pipe delivers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agent_queue.logpump import Pump, stamp_lines


def test_each_line_start_is_stamped_across_chunk_boundaries() -> None:
    text, start = stamp_lines(b"one\ntw", True, b"T ")
    assert (text, start) == (b"T one\nT tw", False)
    text, start = stamp_lines(b"o\n\nthree\n", start, b"U ")
    assert (text, start) == (b"o\nU \nU three\n", True)
    assert stamp_lines(b"", True, b"T ") == (b"", True)


def test_the_pump_writes_stamped_lines_and_the_raw_bytes(tmp_path: Path) -> None:
    read, write = os.pipe()
    log, raw = tmp_path / "job.log", tmp_path / "raw.out"
    pump = Pump(os.fdopen(read, "rb"), log, raw, clock=lambda: 0.0).start()
    os.write(write, b'{"result": 1}\nprogress 50%')
    os.write(write, b"\rprogress 100%\n\xff binary\n")
    os.close(write)
    assert pump.join(10)
    assert raw.read_bytes() == b'{"result": 1}\nprogress 50%\rprogress 100%\n\xff binary\n'
    stamp = b"1970-01-01T00:00:00.000Z "
    assert log.read_bytes() == (stamp + b'{"result": 1}\n' + stamp + b"progress 50%\rprogress 100%\n"
                                + stamp + b"\xff binary\n")


def test_a_log_that_cannot_be_written_still_drains_the_pipe(tmp_path: Path) -> None:
    read, write = os.pipe()
    pump = Pump(os.fdopen(read, "rb"), tmp_path / "no-such-dir" / "job.log").start()

    def tool() -> None:
        with os.fdopen(write, "wb") as out:
            out.write(b"x" * 200_000)  # more than a pipe holds: the tool would block if nobody read

    writer = threading.Thread(target=tool, daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the tool blocked on a pipe nobody drained"
    assert pump.join(10) and pump.error is not None and "job.log" in pump.error

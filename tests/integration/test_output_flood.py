"""Unbounded output (issue 16, item 3): the log is capped, and a full disk holds the factory instead of wedging it.

The old code let the tool write the log file itself: 1 GB of output filled the disk in
seconds, every later step failed with ENOSPC, the job stayed in running/ and the next
job never ran. The disk-full test mounts a small tmpfs (root only) so ENOSPC is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, clean_env, status, wait_for

FLOOD = f"{sys.executable} -c \"import sys\nwhile True: sys.stdout.write('x' * 65535 + chr(10))\""


def test_the_log_keeps_head_and_tail_of_a_flood_within_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "r"
    env = clean_env(AQ_LOG_CAP="64K")
    script = ("echo FIRST-LINE; i=0; while [ $i -lt 2000 ]; do "
              "echo 'middle middle middle middle middle middle middle middle middle middle'; i=$((i+1)); done; "
              "head -c 4000000 /dev/zero | tr '\\0' 'y'; echo; echo LAST-LINE")
    assert aq(root, "enqueue", "--id", "flood", "--", "sh", "-c", script, env=env).returncode == 0
    run = aq(root, "run", "--drain", env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    log = (root / "logs" / "flood.log").read_bytes()
    assert len(log) < 64 * 1024 + 1024  # the cap, plus the header lines and the note
    assert b"FIRST-LINE" in log and log.rstrip().endswith(b"LAST-LINE")
    assert b"bytes of output cut here" in log
    assert (root / "shipped" / "flood").is_dir()
    shown = aq(root, "status", "--json", env=env)
    assert json.loads(shown.stdout)["settings"]["logCapBytes"] == 64 * 1024


def test_a_bad_log_cap_is_refused_naming_the_setting(tmp_path: Path) -> None:
    assert aq(tmp_path / "r", "enqueue", "--", "true").returncode == 0
    out = aq(tmp_path / "r", "status", env=clean_env(AQ_LOG_CAP="lots"))
    assert out.returncode == 2 and "AQ_LOG_CAP" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-ENOSPC unit tests cover the logic")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with open(path, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()


def daemon_view(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = status(root)["daemon"]
    return data


def test_disk_full_gives_the_job_back_uncounted_holds_the_factory_and_recovers(tmp_path: Path,
                                                                                small_disk: Path) -> None:
    root, flag = small_disk / "r", tmp_path / "flood-while-this-exists"
    flag.touch()
    env = clean_env()
    big = ["sh", "-c", f'if [ -e "{flag}" ]; then {FLOOD}; fi; echo calm']
    assert aq(root, "enqueue", "--id", "big", "--priority", "10", "--", *big, env=env).returncode == 0
    assert aq(root, "enqueue", "--id", "small", "--", "echo", "ok", env=env).returncode == 0
    with open(tmp_path / "daemon.err", "w") as err:
        daemon = subprocess.Popen([sys.executable, "-m", "agent_queue", "--root", str(root), "run", "--poll", "0.05"],
                                  stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    try:
        held = wait_for(lambda: daemon_view(root).get("backoff"), "the daemon to hold new work: disk full", 60)
        assert "disk full" in held["reason"] and "No space left on device" in held["reason"]
        big_back = wait_for(lambda: (root / "inbox" / "big").is_dir(), "big back in the inbox")
        assert big_back and not list((root / "running").iterdir())
        result = json.loads((root / "inbox" / "big" / "result.json").read_text())
        assert result["attempts"] == 0 and result["history"] == []  # not counted, not a failed attempt
        # While the disk stays full the daemon tries again later (the probe fails) and takes no work.
        fill(small_disk / "ballast")
        retry_at = held["retryAt"]
        wait_for(lambda: (daemon_view(root).get("backoff") or {}).get("retryAt") not in (None, retry_at),
                 "a failed probe to push the next try back", 60)
        assert not (root / "shipped" / "small").exists() and daemon.poll() is None
        flag.unlink()
        (small_disk / "ballast").unlink()
        wait_for(lambda: sorted(p.name for p in (root / "shipped").iterdir()) == ["big", "small"],
                 "both jobs to ship once there is room", 90)
        assert json.loads((root / "shipped" / "big" / "result.json").read_text())["attempts"] == 1
        assert "backoff" not in daemon_view(root)
        assert b"output of this run dropped: disk full" in (root / "logs" / "big.log").read_bytes()
    finally:
        daemon.kill()
        daemon.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)

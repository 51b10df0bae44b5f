"""process.run: the whole tree of a child ends with it, with a cgroup and without one (subreaper / group sweep)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agent_queue import containment, process
from tests.procutil import alive


class Watch:
    def __init__(self) -> None:
        self.wake = threading.Event()
        self.reason: str | None = None

    def abort_reason(self) -> str | None:
        return self.reason

    def next_deadline(self) -> float | None:
        return None


@pytest.fixture(params=["cgroup", "no-cgroup"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both containments: a cgroup v2 scope where this host allows one, and the fallback without."""
    if request.param == "cgroup" and containment.base() is None:
        pytest.skip("needs a writable cgroup v2 (root, or a delegated subtree); the no-cgroup case still runs")
    if request.param == "no-cgroup":
        monkeypatch.setattr(containment, "_base", [None])
    return str(request.param)


def run(tmp_path: Path, script: str, timeout_s: float = 30, **kw: object) -> process.ProcResult:
    return process.run(("sh", "-c", script), cwd=tmp_path, env={"PATH": os.environ["PATH"]},
                       log_path=tmp_path / "log", timeout_s=timeout_s, watch=Watch(), **kw)  # type: ignore[arg-type]


def pids_in(path: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return [int(x) for x in path.read_text().split()]


def test_orphans_in_new_sessions_end_when_the_tool_exits(tmp_path: Path, mode: str, strays: list[int]) -> None:
    # A setsid'd child, and a double-forked grandchild whose parent exits at once (an orphan).
    script = (f'setsid sleep 300 & echo $! >> {tmp_path}/pids; '
              f'(setsid sh -c "sleep 300 & echo \\$! >> {tmp_path}/pids" &); sleep 0.2')
    res = run(tmp_path, script)
    found = pids_in(tmp_path / "pids")
    strays.extend(found)
    assert res.exit_code == 0 and len(found) == 2
    assert not any(alive(pid) for pid in found)


def test_a_timeout_ends_the_tree(tmp_path: Path, mode: str, strays: list[int]) -> None:
    res = run(tmp_path, f"setsid sleep 300 & echo $! > {tmp_path}/pids; sleep 300", timeout_s=1)
    found = pids_in(tmp_path / "pids")
    strays.extend(found)
    assert res.timed_out and not alive(found[0])


def test_pid_and_scope_are_reported_before_the_tool_can_finish(tmp_path: Path, mode: str) -> None:
    started: list[tuple[int, str | None]] = []
    res = run(tmp_path, "echo $$ > pid", on_start=lambda pid, cgroup: started.append((pid, cgroup)))
    assert res.exit_code == 0
    assert started[0][0] == int((tmp_path / "pid").read_text())  # the tool's own pid (its process group)
    scope = started[0][1]
    assert (scope is not None) == (mode == "cgroup")
    assert scope is None or not Path(scope).exists()  # removed once the tree ended


def test_a_program_that_cannot_start_is_an_error_not_an_exit_code(tmp_path: Path, mode: str) -> None:
    res = process.run(("no-such-program-aq",), cwd=tmp_path, env={"PATH": "/nonexistent"},
                      log_path=tmp_path / "log", timeout_s=10, watch=Watch())
    assert res.exit_code is None and res.error is not None and "no-such-program-aq" in res.error


def test_the_exit_signal_of_the_tool_is_kept(tmp_path: Path, mode: str) -> None:
    assert run(tmp_path, "kill -TERM $$").exit_code == -signal.SIGTERM
    assert run(tmp_path, "exit 7").exit_code == 7

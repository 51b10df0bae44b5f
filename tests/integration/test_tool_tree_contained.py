"""A tool's background processes end with its attempt, and with the daemon (issue 16, item 2).

Repro on the old code: a tool ran ``setsid sleep 300 &``; the background process left
the tool's process group, so the timeout's group kill missed it and it outlived the
job and the daemon (in a repo job it could change the worktree after verify). Every
test here runs real daemons and reads the background process's pid from a file the
tool wrote outside its workspace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import aq, clean_env, running_pid, start, wait_for

from agent_queue import containment, process
from agent_queue.inbox import LocalQueue
from agent_queue.jobs import Job
from tests.procutil import alive


def read_pid(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), f"{path.name} to be written"))


def background(pid_file: Path) -> str:
    """Shell text: start ``sleep 300`` in a session of its own and write its pid to ``pid_file``."""
    return f"setsid sleep 300 & echo $! > {pid_file}"


def drain(root: Path, *spec_args: str) -> None:
    out = aq(root, "enqueue", *spec_args)
    assert out.returncode == 0, out.stderr
    run = aq(root, "run", "--drain", timeout=60)
    assert run.returncode == 0, run.stderr


def test_a_setsid_background_process_ends_when_its_tool_times_out(tmp_path: Path, strays: list[int]) -> None:
    root, pid_file = tmp_path / "r", tmp_path / "bg.pid"
    drain(root, "--id", "t", "--timeout", "1", "--max-attempts", "1", "--", "sh", "-c",
          f"{background(pid_file)}; sleep 60")
    bg = read_pid(pid_file)
    strays.append(bg)
    assert (root / "quarantine" / "t").is_dir()
    assert not alive(bg)


def test_a_setsid_background_process_ends_when_its_tool_exits(tmp_path: Path, strays: list[int]) -> None:
    root, pid_file = tmp_path / "r", tmp_path / "bg.pid"
    drain(root, "--id", "t", "--", "sh", "-c", background(pid_file))
    bg = read_pid(pid_file)
    strays.append(bg)
    assert (root / "shipped" / "t").is_dir()
    assert not alive(bg)


def test_a_daemon_killed_with_sigkill_takes_its_tool_and_the_tools_background_with_it(
        tmp_path: Path, strays: list[int]) -> None:
    root, pid_file = tmp_path / "r", tmp_path / "bg.pid"
    assert aq(root, "enqueue", "--id", "t", "--", "sh", "-c", f"{background(pid_file)}; exec sleep 300").returncode == 0
    daemon = start(root, "run", "--poll", "0.05")
    try:
        bg = read_pid(pid_file)
        tool = wait_for(lambda: running_pid(root), "the tool's pid")
        strays.extend([bg, tool])
        daemon.kill()
        daemon.communicate(timeout=10)
        assert wait_for(lambda: not alive(tool) and not alive(bg), "the tool and its background process to end")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate(timeout=10)


def leftover(root: Path, job_id: str, record: dict[str, object]) -> None:
    """running/<id> as a daemon killed mid-job leaves it, with ``record`` merged into result.json."""
    queue = LocalQueue(root).init()
    queue.materialize(Job.from_dict({"id": job_id, "command": ["true"]}), {"attempt": 1, **record})


def test_start_up_kills_the_whole_tree_of_a_leftover_tool(tmp_path: Path, strays: list[int]) -> None:
    """A tool left running (its daemon and shepherd gone) with a setsid'd grandchild: both end at the next start."""
    root, pid_file = tmp_path / "r", tmp_path / "bg.pid"
    tool = subprocess.Popen(["sh", "-c", f"{background(pid_file)}; exec sleep 300"], start_new_session=True)
    strays.append(tool.pid)
    try:
        bg = read_pid(pid_file)
        strays.append(bg)
        leftover(root, "t", {"pid": tool.pid, "pidStart": process.identity(tool.pid)})
        run = aq(root, "run", "--drain", timeout=60)
        assert run.returncode == 0, run.stderr
        assert wait_for(lambda: tool.poll() is not None, "the leftover tool to be killed")
        assert not alive(bg)
        assert json.loads((root / "shipped" / "t" / "result.json").read_text())["attempts"] == 2
    finally:
        if tool.poll() is None:
            tool.kill()
        tool.wait(timeout=10)


@pytest.mark.skipif(containment.base() is None, reason="needs a writable cgroup v2 (root, or a delegated subtree)")
def test_start_up_empties_and_removes_a_leftover_cgroup(tmp_path: Path, strays: list[int]) -> None:
    """Whatever is still in the cgroup a killed daemon recorded ends at the next start, even orphans."""
    root = tmp_path / "r"
    scope = containment.open_scope()
    assert scope is not None
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    strays.append(orphan.pid)
    try:
        assert containment.enter(scope, orphan.pid)
        leftover(root, "t", {"pid": 2 ** 22 + 7, "pidStart": "proc:1", "cgroup": str(scope)})
        run = aq(root, "run", "--drain", timeout=60)
        assert run.returncode == 0, run.stderr
        assert wait_for(lambda: orphan.poll() is not None, "the process in the leftover cgroup to be killed")
        assert not scope.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait(timeout=10)
        containment.remove(scope, wait_s=0)


def test_the_tool_still_gets_exactly_its_environment_and_its_exit_status(tmp_path: Path) -> None:
    """The shepherd between daemon and tool changes nothing the tool sees: env, cwd, group, exit code."""
    root = tmp_path / "r"
    env = clean_env(LC_SENTINEL="a b=c", HOME=str(tmp_path))
    script = ('env | sort > "$1/env.txt"; pwd -P > "$1/cwd.txt"; '
              'ps -o pid=,pgid= -p $$ > "$1/group.txt"; exit 3')
    out = aq(root, "enqueue", "--id", "e", "--max-attempts", "1", "--", "sh", "-c", script, "sh", str(tmp_path),
             env=env)
    assert out.returncode == 0, out.stderr
    assert aq(root, "run", "--drain", env=env).returncode == 0
    result = json.loads((root / "quarantine" / "e" / "result.json").read_text())
    assert result["history"][-1]["exitCode"] == 3
    seen = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert seen.get("LC_SENTINEL") == "a b=c" and not any(k.startswith(("AQ_", "PYTHON")) for k in seen)
    assert (tmp_path / "cwd.txt").read_text().strip() == str((root / "work" / "e").resolve())
    pid, pgid = (tmp_path / "group.txt").read_text().split()
    assert pid == pgid  # the tool leads its own process group, as it always did

"""The real CLI in subprocesses on tmp roots: drain, status, logs, requeue, signals, crash recovery."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import aq, clean_env, running_pid, start, status, wait_for

from tests.procutil import alive


def kill_group(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def test_drain_status_logs_requeue(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert aq(root, "enqueue", "--id", "ok", "--verify", "test -s out.txt", "--", "sh", "-c",
              "echo hello-ü > out.txt; cat out.txt").stdout.strip() == "ok"
    assert aq(root, "enqueue", "--id", "bad", "--max-attempts", "1", "--verify", "false", "--", "true").returncode == 0
    assert aq(root, "enqueue", "--id", "slow", "--timeout", "0.5", "--max-attempts", "1", "--",
              "sleep", "30").returncode == 0
    run = aq(root, "--log-format", "json", "run", "--drain")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines()]
    assert {e["msg"] for e in events} >= {"job taken", "attempt started", "shipped", "quarantined", "verify failed"}
    assert all(e["factoryId"] for e in events)
    assert status(tmp_path / "r")["counts"] == {"inbox": 0, "running": 0, "shipped": 1, "quarantine": 2, "cancelled": 0}
    logs = aq(root, "logs", "ok")
    assert logs.returncode == 0 and "hello-ü" in logs.stdout and "=== " in logs.stdout
    assert aq(root, "requeue", "ok").returncode == 2  # shipped: refused
    assert aq(root, "requeue", "bad").returncode == 0
    assert status(root)["counts"]["inbox"] == 1
    result = json.loads((root / "inbox" / "bad" / "result.json").read_text())
    assert result["attempts"] == 0 and len(result["history"]) == 1  # history kept, attempts reset


def test_bad_file_dropped_in_inbox_while_running(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    aq(root, "run", "--drain")  # creates the layout (a read like status never does)
    daemon = start(root, "run", "--poll", "0.05")
    procs.append(daemon)
    (root / "inbox" / "junk.json").write_text("{oops")
    (root / "inbox" / "good.json").write_text(json.dumps({"id": "good", "command": ["true"]}))
    wait_for(lambda: (root / "shipped" / "good").is_dir(), "good job shipped")
    assert (root / "quarantine" / "junk" / "junk.json").read_text() == "{oops"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0


def test_sigterm_gives_the_running_job_back_uncounted(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    aq(root, "enqueue", "--id", "long", "--", "sleep", "60")
    daemon = start(root, "run", "--grace", "0.3", "--poll", "0.05")
    procs.append(daemon)
    pid = wait_for(lambda: running_pid(root), "the tool to start")
    st = status(root)
    assert st["daemon"]["running"] and st["running"][0]["id"] == "long" and st["running"][0]["pid"] == pid
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    result = json.loads((root / "inbox" / "long" / "result.json").read_text())
    assert result["attempts"] == 0 and "grace" in result["reason"]
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the tool's whole group is gone


def test_crashed_daemon_job_recovered_with_attempt_counted(tmp_path: Path,
                                                            procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    aq(root, "enqueue", "--id", "c", "--max-attempts", "2", "--", "sh", "-c",
       "if [ -f ../marker ]; then exit 0; fi; touch ../marker; sleep 60")
    daemon = start(root, "run", "--poll", "0.05")
    procs.append(daemon)
    pid = wait_for(lambda: running_pid(root), "the tool to start")
    daemon.kill()
    daemon.wait(timeout=10)
    try:
        assert (root / "running" / "c").is_dir()
        # The crashed daemon's tool does not run on in the workspace: its shepherd ends it (issue 16).
        assert wait_for(lambda: not alive(pid), "the tool of the killed daemon to end")
        again = aq(root, "run", "--drain", timeout=120)  # a hang guard: 30 s ran out once on a 5-10x slowed VM
        assert again.returncode == 0, again.stderr
        result = json.loads((root / "shipped" / "c" / "result.json").read_text())
        assert result["attempts"] == 2
        assert [h["outcome"] for h in result["history"]] == ["crashed", "shipped"]
    finally:
        kill_group(pid)


def test_second_daemon_on_the_same_root_is_refused(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    aq(root, "run", "--drain")  # creates the layout (a read like status never does)
    first = start(root, "run", "--poll", "0.05")
    procs.append(first)
    wait_for(lambda: status(root)["daemon"]["running"], "first daemon")
    second = aq(root, "run", "--once")
    assert second.returncode == 1 and "another agent-queue daemon" in second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=10) == 0


def test_logs_follow_until_the_job_ends(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    aq(root, "enqueue", "--id", "f", "--", "sh", "-c", "echo first; sleep 0.5; echo last")
    follower = start(root, "logs", "f", "--follow")
    procs.append(follower)
    assert aq(root, "run", "--once").returncode == 0
    out, _ = follower.communicate(timeout=15)
    assert follower.returncode == 0
    assert "first" in out and "last" in out


def test_env_variables_configure_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "r"
    env = clean_env(AQ_ROOT=str(root), AQ_FACTORY_ID="env-fac", AQ_FLEET_TOKEN="tok-xyz", AQ_LOG_FORMAT="json")
    root.mkdir()  # status reads a queue, it never creates one
    out = subprocess.run([sys.executable, "-m", "agent_queue", "status", "--json"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["settings"]["factoryId"] == "env-fac" and report["settings"]["root"] == str(root)
    assert "tok-xyz" not in out.stdout + out.stderr

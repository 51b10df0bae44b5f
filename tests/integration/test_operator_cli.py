"""Issue 17 through the real `agent-queue` CLI on local queues: jobs, show, cancel, logs, status,
read commands that never create a queue, --max-jobs, prompts stored once, the argv prompt limit."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import aq, clean_env, running_pid, start, status, wait_for

from tests.procutil import alive

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def show(root: Path, job_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = aq(root, "show", job_id, "--json", env=env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


# --- read commands never create a queue ------------------------------------------------------


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["jobs"], ["show", "x"], ["logs", "x"],
                                  ["logs", "x", "--follow"], ["cancel", "x"], ["requeue", "x"]])
def test_read_commands_on_a_missing_root_exit_2_and_create_nothing(tmp_path: Path, args: list[str]) -> None:
    root = tmp_path / "nothing-here"
    out = aq(root, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and str(root) in out.stderr and "no queue here" in out.stderr
    assert not root.exists()


@pytest.mark.parametrize("args", [["status"], ["jobs"], ["enqueue", "--", "true"]])
def test_a_root_that_is_a_file_exits_2_from_the_flag_and_from_aq_root(tmp_path: Path, args: list[str]) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a queue")
    by_flag = aq(afile, *args)
    by_env = subprocess.run([sys.executable, "-m", "agent_queue", *args], capture_output=True, text=True,
                            env=clean_env(AQ_ROOT=str(afile)), timeout=30)
    assert (by_flag.returncode, by_env.returncode) == (2, 2), (by_flag.stderr, by_env.stderr)
    assert str(afile) in by_flag.stderr and str(afile) in by_env.stderr
    assert afile.read_text() == "not a queue"


def test_coordinator_stub_status_on_a_missing_state_dir_exits_2(tmp_path: Path) -> None:
    state = tmp_path / "no-coord"
    out = subprocess.run([sys.executable, "-m", "coordinator_stub", "--state", str(state), "status"],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 2 and str(state) in out.stderr
    assert not state.exists()


# --- jobs ----------------------------------------------------------------------------------------

OPEN_COUNTER = '''
import atexit, os, sys
_n = [0]
def _hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith(("job.json", "result.json")):
        _n[0] += 1
sys.addaudithook(_hook)
atexit.register(lambda: open(os.environ["OPEN_COUNT_FILE"], "w").write(str(_n[0])))
'''


def make_jobs(root: Path, n: int) -> None:
    """A queue of ``n`` finished jobs laid out as the queue writes them (no fsync: a fixture, made fast)."""
    for state in ("inbox", "running", "shipped", "quarantine", "cancelled", "work", "logs", ".state"):
        (root / state).mkdir(parents=True, exist_ok=True)
    base = time.time() - n
    for i in range(n):
        job_id = f"j{i:05d}"
        folder = root / ("quarantine" if i % 10 == 0 else "shipped") / job_id
        folder.mkdir()
        (folder / "job.json").write_text(json.dumps({"id": job_id, "kind": "leaf", "tool": "shell",
                                                     "command": ["true"]}))
        (folder / "result.json").write_text(json.dumps({"jobId": job_id, "attempts": 1, "reason": (
            "tool: exited with status 1" if i % 10 == 0 else None), "enqueuedAt": "2026-01-01T00:00:00.000Z"}))
        os.utime(folder, (base + i, base + i))  # j09999 changed last


def test_jobs_pages_10k_jobs_reading_only_the_page(tmp_path: Path) -> None:
    root, hook, count = tmp_path / "r", tmp_path / "hook", tmp_path / "opens"
    make_jobs(root, 10_000)
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OPEN_COUNTER)
    env = clean_env(PYTHONPATH=os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
                    OPEN_COUNT_FILE=str(count))
    out = aq(root, "jobs", "--limit", "20", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["id", "state", "tool", "attempts", "age", "reason"]
    assert [ln.split()[0] for ln in lines[1:]] == [f"j{i:05d}" for i in range(9999, 9979, -1)]  # newest first
    assert "showing the 20 most recent of 10000 jobs" in out.stderr
    assert int(count.read_text()) <= 2 * 20  # only the page's job.json and result.json were opened
    quarantined = aq(root, "jobs", "--state", "quarantined", "--limit", "3", "--json")
    data = json.loads(quarantined.stdout)
    assert data["total"] == 1000 and [j["id"] for j in data["jobs"]] == ["j09990", "j09980", "j09970"]
    assert data["jobs"][0]["reason"] == "tool: exited with status 1" and data["jobs"][0]["state"] == "quarantine"
    assert aq(root, "jobs", "--state", "bogus").returncode == 2


# --- show, cancel, logs ----------------------------------------------------------------------------


def test_show_redacts_secrets_and_lists_every_attempt(tmp_path: Path) -> None:
    root, marker = tmp_path / "r", tmp_path / "second-time"
    spec = {"id": "s1", "command": ["sh", "-c", f"test -f {marker} || {{ touch {marker}; exit 3; }}",
                                    "tok-abc-123"],
            "env": {"API_KEY": "sk-live-999"}, "repo": "https://bob:hunter2@example.invalid/x.git",
            "budget": {"maxAttempts": 2}}
    assert aq(root, "enqueue", "-", stdin=json.dumps({**spec, "repo": None})).returncode == 0
    env = clean_env(AQ_FLEET_TOKEN="tok-abc-123")
    assert aq(root, "run", "--drain", env=env).returncode == 0
    detail = show(root, "s1", env)
    text = json.dumps(detail) + aq(root, "show", "s1", env=env).stdout
    assert "sk-live-999" not in text and "tok-abc-123" not in text
    assert detail["spec"]["env"] == {"API_KEY": "<redacted>"}
    assert detail["state"] == "shipped"
    assert [(a["attempt"], a["exitCode"], a["outcome"]) for a in detail["history"]] == [(1, 3, "failed"),
                                                                                         (2, 0, "shipped")]
    assert all(a["factory"] and a["startedAt"] for a in detail["history"])
    assert detail["log"]["path"].endswith("logs/s1.log") and detail["log"]["bytes"] > 0
    assert aq(root, "show", "ghost").returncode == 2
    assert aq(root, "enqueue", "-", stdin=json.dumps({"id": "r1", "command": ["true"], "repo": spec["repo"]}),
              env=env).returncode == 0
    shown = aq(root, "show", "r1", env=env).stdout
    assert "hunter2" not in shown and "https://<redacted>@example.invalid/x.git" in shown


def test_cancel_queued_running_and_a_crashed_daemons_job(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root, shipped = tmp_path / "r", tmp_path / "shipped.txt"
    assert aq(root, "enqueue", "--id", "queued", "--", "true").returncode == 0
    assert aq(root, "cancel", "queued").stdout.strip() == "queued: cancelled queued"
    assert aq(root, "cancel", "queued").stdout.strip() == "queued: already cancelled"
    assert aq(root, "enqueue", "-", stdin=json.dumps({
        "id": "long", "command": ["sh", "-c", "sleep 60"], "verify": ["true"],
        "ship": ["touch", str(shipped)]})).returncode == 0
    follower = start(root, "logs", "long", "--follow")
    procs.append(follower)
    daemon = start(root, "run", "--poll", "0.05")
    procs.append(daemon)
    pid = wait_for(lambda: running_pid(root), "the tool to start")
    cancelled = aq(root, "cancel", "long")
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "long: cancelled long", cancelled.stderr
    assert not alive(pid)  # the whole tool group was stopped before cancel returned
    assert status(root)["counts"]["cancelled"] == 2 and not shipped.exists()
    out, err = follower.communicate(timeout=20)
    assert follower.returncode == 1 and out.splitlines()[-1].endswith("outcome: cancelled: cancelled: cancelled by "
                                                                      "the operator"), out
    assert daemon.poll() is None  # the daemon lives on
    assert aq(root, "cancel", "ghost").returncode == 2

    assert aq(root, "enqueue", "--id", "orphan", "--", "sleep", "60").returncode == 0
    pid = wait_for(lambda: running_pid(root), "the orphan's tool to start")
    daemon.kill()
    daemon.wait(timeout=10)
    assert aq(root, "cancel", "orphan").returncode == 0  # no daemon: the command stops the leftover itself
    assert wait_for(lambda: not alive(pid), "the leftover tool to be stopped")
    assert show(root, "orphan")["state"] == "cancelled"
    assert aq(root, "enqueue", "--id", "done", "--", "true").returncode == 0
    assert aq(root, "run", "--drain").returncode == 0
    refused = aq(root, "cancel", "done")
    assert refused.returncode == 2 and "already ended in shipped/" in refused.stderr


def test_cancel_a_local_composite_cancels_its_unshipped_children(tmp_path: Path,
                                                                  procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    epic = {"id": "epic", "kind": "composite", "verify": ["true"], "children": [
        {"id": "a", "command": ["true"]}, {"id": "b", "command": ["sleep", "60"], "dependsOn": ["a"]},
        {"id": "c", "command": ["true"], "dependsOn": ["b"]}]}
    assert aq(root, "enqueue", "-", stdin=json.dumps(epic)).returncode == 0
    procs.append(start(root, "run", "--poll", "0.05"))
    wait_for(lambda: (root / "running" / "b").is_dir() and running_pid(root), "child b to run")
    out = aq(root, "cancel", "epic")
    assert out.returncode == 0 and out.stdout.strip() == "epic: cancelled b, c, epic", out.stderr
    (roll,) = status(root)["composites"]
    assert roll["state"] == "cancelled" and roll["counts"]["shipped"] == 1 and roll["counts"]["cancelled"] == 2
    assert "composite: epic cancelled (shipped 1, cancelled 2, verify cancelled)" in aq(root, "status").stdout
    parent = show(root, "epic")
    assert parent["state"] == "cancelled" and parent["kind"] == "composite" and parent["verify"]["state"] == "cancelled"


def test_logs_follow_says_the_outcome_and_waits_aloud(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    assert aq(root, "enqueue", "--id", "ok", "--", "sh", "-c", "echo hello").returncode == 0
    assert aq(root, "enqueue", "--id", "bad", "--max-attempts", "1", "--", "sh", "-c", "exit 4").returncode == 0
    ok = start(root, "logs", "ok", "--follow")
    bad = start(root, "logs", "bad", "--follow")
    procs += [ok, bad]
    wait_for(lambda: True, "")
    time.sleep(0.5)  # let both followers see the queued jobs with no daemon running
    assert aq(root, "run", "--drain").returncode == 0
    out, err = ok.communicate(timeout=20)
    assert ok.returncode == 0 and re.search(r"=== \S+ ok outcome: shipped$", out.strip())
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z hello$", out, re.M), out  # lines carry a time
    assert "waiting (start one with `agent-queue run`)" in err and "no daemon is running" in err
    out, _ = bad.communicate(timeout=20)
    assert bad.returncode == 1
    assert out.strip().splitlines()[-1].endswith("outcome: quarantined: tool: exited with status 4 "
                                                  "(attempt 1 of 1)")
    header = next(line for line in out.splitlines() if "attempt 1 of 1" in line)
    assert "(round 1)" in header
    assert aq(root, "requeue", "bad").returncode == 0
    assert aq(root, "run", "--drain").returncode == 0
    assert "attempt 1 of 1 (round 2)" in aq(root, "logs", "bad").stdout  # the requeued round says so
    plain = aq(root, "logs", "bad")
    assert plain.returncode == 0 and "outcome:" not in plain.stdout  # without --follow: the log only


# --- status ---------------------------------------------------------------------------------------


def test_status_is_short_verbose_has_the_settings_and_no_python_reprs(tmp_path: Path,
                                                                      procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    assert aq(root, "enqueue", "--id", "w", "--", "sleep", "60").returncode == 0
    daemon = start(root, "run", "--poll", "0.05")
    procs.append(daemon)
    wait_for(lambda: running_pid(root), "the tool to start")
    short = aq(root, "status").stdout
    assert "mode: offline (fleet=0 route=0 shadow=0)" in short
    assert re.search(r"running: w \(tool shell, attempt 1, pid \d+, \d+s\)", short), short
    assert re.search(r"daemon: pid \d+ since \S+ \(factory \S+, up \d+s\)", short), short
    assert "fleetApiCmd" not in short and "settings:" not in short
    verbose = aq(root, "status", "--verbose").stdout
    assert "settings:" in verbose and "fleetApiCmd: -" in verbose and "config: -" in verbose
    assert "None" not in verbose and "[]" not in verbose and "True" not in verbose
    assert "\x1b[" not in verbose  # not a terminal: no colour


def test_status_watch_redraws_until_interrupted(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    root = tmp_path / "r"
    assert aq(root, "run", "--drain").returncode == 0
    watcher = start(root, "status", "--watch", "0.2")
    procs.append(watcher)
    time.sleep(1.5)
    watcher.send_signal(signal.SIGINT)
    out, _ = watcher.communicate(timeout=10)
    assert watcher.returncode == 0
    assert out.count("daemon: not running") >= 3 and "\x1b[" not in out


def _in_a_terminal(root: Path, extra: dict[str, str]) -> str:
    """`agent-queue status` with stdout on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agent_queue", "--root", str(root), "status"], stdout=follower,
                            stderr=subprocess.DEVNULL, env=clean_env(**extra))
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(leader)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert aq(root, "enqueue", "--id", "s", "--", "true").returncode == 0
    assert aq(root, "run", "--drain").returncode == 0
    coloured = _in_a_terminal(root, {})
    assert ANSI.search(coloured) and "shipped: 1" in ANSI.sub("", coloured)
    plain = _in_a_terminal(root, {"NO_COLOR": "1"})
    assert not ANSI.search(plain) and "shipped: 1" in plain


# --- the daemon counts jobs, not attempts --------------------------------------------------------------


def test_max_jobs_and_the_shutdown_line_count_jobs_not_attempts(tmp_path: Path) -> None:
    root, marker = tmp_path / "r", tmp_path / "failed-once"
    flaky = f"test -f {marker} || {{ touch {marker}; exit 1; }}"
    assert aq(root, "enqueue", "--id", "a-flaky", "--", "sh", "-c", flaky).returncode == 0
    time.sleep(0.01)
    assert aq(root, "enqueue", "--id", "b-next", "--", "true").returncode == 0
    run = aq(root, "run", "--max-jobs", "1")
    assert run.returncode == 0, run.stderr
    assert "daemon stopped" in run.stderr and "jobs=1 attempts=2" in run.stderr
    assert show(root, "a-flaky")["state"] == "shipped"
    assert show(root, "b-next")["state"] == "inbox"  # one job, however many attempts it took


# --- prompts --------------------------------------------------------------------------------------------


def test_a_prompt_is_stored_once_and_reaches_the_tool(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "agent-queue.toml").write_text(
        '[tools.catter]\nargv = ["sh", "-c", "cat > got.txt"]\nprompt_via = "stdin"\n'
        '[tools.argvtool]\nargv = ["echo", "{prompt}"]\nprompt_via = "argv"\n')
    prompt = "Fix the bug ✓\n" + "x" * 300_000
    spec = {"id": "p1", "tool": "catter", "prompt": prompt}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec)).returncode == 0
    stored = root / "inbox" / "p1"
    assert "prompt" not in json.loads((stored / "job.json").read_text())
    assert (stored / "prompt.txt").read_text(encoding="utf-8") == prompt
    assert aq(root, "run", "--drain").returncode == 0
    assert (root / "work" / "p1" / "got.txt").read_text(encoding="utf-8") == prompt
    assert not (root / ".state" / "jobs" / "p1" / "prompt.txt").exists()  # no second copy
    assert show(root, "p1")["prompt"]["bytes"] == len(prompt.encode())

    old = root / "inbox" / "legacy"  # an older layout: the prompt inside job.json
    old.mkdir()
    (old / "job.json").write_text(json.dumps({"id": "legacy", "tool": "catter", "prompt": "old layout"}))
    assert aq(root, "run", "--drain").returncode == 0
    assert (root / "work" / "legacy" / "got.txt").read_text() == "old layout"

    big = aq(root, "enqueue", "-", stdin=json.dumps({"id": "toobig", "tool": "argvtool", "prompt": "y" * 200_000}))
    assert big.returncode == 2 and "takes the prompt as an argument" in big.stderr
    assert big.stderr.count("\n") == 1 and not (root / "inbox" / "toobig").exists()

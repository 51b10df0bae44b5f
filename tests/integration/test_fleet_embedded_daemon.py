"""A real `agent-queue run --fleet` daemon on the literal ``coordinator-stub --state DIR call`` seam.

The daemon must run the stub in-process (embedded): a job still goes end to
end, and no ``coordinator-stub`` process is spawned per poll. Spawns are
counted from inside the daemon with an audit hook (``subprocess.Popen``
events, loaded through a ``sitecustomize`` on PYTHONPATH), so even the
shortest-lived child is seen. The same daemon behind a wrapper script is the
control: there every poll spawns.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import wait_for
from fleet_support import Daemons, coord_enqueue, coord_job, daemons, fleet_env, local_records

from agent_queue import shepherd

VENV_BIN = Path(sys.executable).parent
SHEPHERD = Path(shepherd.__file__)
VENV_STUB = VENV_BIN / "coordinator-stub"
SPAWN_HOOK = '''
import json, os, sys

def _record(event, args):
    if event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        with open(os.environ["SPAWN_LOG_FOR_TEST"], "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "argv": [os.fsdecode(a) for a in argv]}) + "\\n")

if os.environ.get("SPAWN_LOG_FOR_TEST"):
    sys.addaudithook(_record)
'''

pytestmark = pytest.mark.skipif(not VENV_STUB.is_file(), reason="no coordinator-stub script next to python")


@pytest.fixture()
def ds() -> Iterator[Daemons]:
    with daemons() as d:
        yield d


def spawns(log: Path, pid: int) -> list[list[str]]:
    """The programs the daemon started: a child run under its shepherd counts as the child's argv."""
    lines = log.read_text().splitlines() if log.exists() else []
    argvs = [rec["argv"] for rec in map(json.loads, lines) if rec["pid"] == pid]
    return [argv[argv.index("--") + 1:] if str(SHEPHERD) in argv else argv for argv in argvs]


def claims(state: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["op"] == "claim" and e.get("factoryId") == "f1"]


def run_one_job(tmp_path: Path, ds: Daemons, api_cmd: str, state: Path) -> tuple[Any, list[list[str]]]:
    """Enqueue one job, run a daemon until it shipped and polled idle a while; (daemon, its spawns)."""
    hook_dir, spawn_log, root = tmp_path / "hook", tmp_path / "spawns.jsonl", tmp_path / "root"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SPAWN_HOOK)
    pythonpath = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    env = fleet_env(api_cmd=api_cmd, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
                    PYTHONPATH=pythonpath, SPAWN_LOG_FOR_TEST=str(spawn_log))
    coord_enqueue(state, {"id": "j1", "command": ["sh", "-c", "echo hi > out.txt"],
                          "verify": ["test", "-s", "out.txt"]})
    daemon = ds.start(root, env)
    wait_for(lambda: local_records(root, "shipped") == ["j1"] or daemon.poll() is not None, "j1 shipped", 60)
    assert coord_job(state, "j1")["meta"]["state"] == "shipped"
    idle_from = len(claims(state))
    wait_for(lambda: len(claims(state)) >= idle_from + 5 or daemon.poll() is not None, "five idle polls", 30)
    assert daemon.poll() is None, daemon.communicate()
    daemon.terminate()
    _, err = daemon.communicate(timeout=30)
    return err, spawns(spawn_log, daemon.pid)


def test_literal_stub_seam_runs_in_process_and_spawns_no_stub(tmp_path: Path, ds: Daemons) -> None:
    state = tmp_path / "coord"
    err, spawned = run_one_job(tmp_path, ds, f"coordinator-stub --state {shlex.quote(str(state))} call", state)
    assert "requests run in-process (embedded)" in err
    polls = claims(state)
    assert len(polls) >= 6 and polls[0]["status"] == 200 and polls[-1]["status"] == 204
    # The hook saw the daemon spawn the job's tool and its verify gate...
    assert ["sh", "-c", "echo hi > out.txt"] in spawned and ["test", "-s", "out.txt"] in spawned
    # ...and never a coordinator process, for any of the polls, the renewals or the report.
    assert not [argv for argv in spawned if any("coordinator" in a for a in argv)], spawned


def test_a_wrapper_around_the_stub_still_spawns_per_request(tmp_path: Path, ds: Daemons) -> None:
    state, wrapper = tmp_path / "coord", tmp_path / "seam-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(VENV_STUB))} "$@"\n')
    wrapper.chmod(0o755)
    err, spawned = run_one_job(tmp_path, ds, f"{wrapper} --state {shlex.quote(str(state))} call", state)
    assert "in-process (embedded)" not in err
    seam_calls = [argv for argv in spawned if argv[0] == str(wrapper)]
    assert len(seam_calls) >= len(claims(state)) + 1  # every claim and the report, each its own process

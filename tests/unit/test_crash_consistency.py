"""Crash consistency: a process SIGKILLed at every step of a state write leaves a state that loads and is whole.

How: a child process (this file run as a script) performs one real operation
on a real state directory, with ``os.fsync``, ``os.replace``, ``os.rename``, ``os.write``
(the journal append) and ``os.truncate``
wrapped so that at the K-th such call it kills itself with SIGKILL, either
just *before* the call (e.g. data written but not fsynced, or fsynced but not
renamed) or just *after* it (renamed but the directory not fsynced). A first
run with no kill counts the steps; then every (K, before|after) is tried.
After each kill the parent opens the directory with fresh objects and checks
the invariants: it loads, every job is in exactly one state, none is lost,
the operation either happened or did not, and work can go on from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_queue.inbox import LocalQueue, State
from agent_queue.jobs import Job
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
TTL = 600.0
SEEDED = ("j-leased", "j-queued", "j-shipped")


def _spec(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "tool": "shell", "command": ["true"]}


def _coord(state: Path) -> Coordinator:
    return Coordinator(JsonStore(state), lambda: T0 + 1.0, TTL)


# ------------------------------------------------------------------ child side


def _arm(kill_at: int, when: str) -> None:
    """Wrap the durable steps so the ``kill_at``-th one SIGKILLs this process (0: never; count on exit)."""
    counter = [0]

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            if counter[0] == kill_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kwargs)
            if counter[0] == kill_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(os, name, step)

    for name in ("fsync", "fdatasync", "replace", "rename", "write", "truncate"):  # write: the journal's append
        if hasattr(os, name):  # no fdatasync on macOS
            wrap(name)
    import atexit

    atexit.register(lambda: sys.stdout.write(f"steps={counter[0]}\n"))


def _child(op: str, state: Path) -> None:
    if op.startswith("coord-"):
        coord = _coord(state)
        if op == "coord-report":
            coord.report("j-leased", "f1", 1, "shipped", {})
        elif op == "coord-claim":
            coord.claim("f2", [])
        elif op == "coord-enqueue":
            coord.enqueue(_spec("j-new"))
        elif op == "coord-release":
            coord.release("j-leased", "f1", 1, "retry me")
    else:
        queue = LocalQueue(state)
        if op == "queue-move":
            queue.move("j-leased", State.RUNNING, State.SHIPPED, {"outcome": "shipped"})
        elif op == "queue-enqueue":
            queue.enqueue(Job.from_dict(_spec("j-new")))
        elif op == "queue-adopt":
            queue.normalise_inbox()


if __name__ == "__main__":
    _op, _dir, _k, _when = sys.argv[1:5]
    _arm(int(_k), _when)
    _child(_op, Path(_dir))
    sys.exit(0)


# ------------------------------------------------------------------ parent side


def _seed(op: str, state: Path) -> None:
    if op.startswith("coord-"):
        return _seed_coord(state)
    queue = LocalQueue(state).init()
    for job_id in SEEDED:
        queue.enqueue(Job.from_dict(_spec(job_id)))
    queue.move("j-leased", State.INBOX, State.RUNNING, {})
    queue.move("j-shipped", State.INBOX, State.RUNNING, {})
    queue.move("j-shipped", State.RUNNING, State.SHIPPED, {})
    if op == "queue-adopt":
        (queue.dir(State.INBOX) / "loose.json").write_text(json.dumps(_spec("j-loose")))


def _seed_coord(state: Path) -> None:
    """j-shipped shipped, j-leased leased to f1 at epoch 1, j-queued queued."""
    coord = Coordinator(JsonStore(state), lambda: T0, TTL)
    for job_id in ("j-shipped", "j-leased", "j-queued"):
        coord.enqueue(_spec(job_id))
    first = coord.claim("f0", [])
    assert first is not None and first["job"]["id"] == "j-shipped"
    coord.report("j-shipped", "f0", first["lease"]["leaseEpoch"], "shipped", {})
    second = coord.claim("f1", [])
    assert second is not None and second["job"]["id"] == "j-leased" and second["lease"]["leaseEpoch"] == 1


def _run_child(op: str, state: Path, kill_at: int, when: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, __file__, op, str(state), str(kill_at), when],
                          capture_output=True, text=True, env=env, timeout=60, cwd=REPO)


def _coord_states(state: Path) -> dict[str, str]:
    jobs = _coord(state).list_jobs()
    ids = [j["job"]["id"] for j in jobs]
    assert len(ids) == len(set(ids)), f"a job listed twice: {ids}"
    return {j["job"]["id"]: j["meta"]["state"] for j in jobs}


def _check_coord(op: str, state: Path) -> str:
    """Invariants after a crash; returns 'done' or 'not done' for the interrupted operation."""
    states = _coord_states(state)
    expected = set(SEEDED) | ({"j-new"} if op == "coord-enqueue" else set())
    assert set(states) - {"j-new"} == set(SEEDED), f"lost or invented jobs: {states}"
    assert set(states) <= expected
    assert states["j-shipped"] == "shipped" and states["j-queued"] in ("queued", "leased")
    for line in (state / "events.jsonl").read_text().splitlines():
        json.loads(line)  # every event line whole
    outcome = {
        "coord-report": states["j-leased"] == "shipped",
        "coord-release": states["j-leased"] == "queued",
        "coord-claim": states["j-queued"] == "leased",
        "coord-enqueue": "j-new" in states,
    }[op]
    if not outcome:
        assert states["j-leased"] == "leased"
    # Work goes on: the holder's replay of its own op succeeds whichever side of the crash we are on.
    coord = _coord(state)
    if op == "coord-report":
        coord.report("j-leased", "f1", 1, "shipped", {})
    elif op == "coord-release":
        coord.release("j-leased", "f1", 1, "retry me")
    elif op == "coord-enqueue":
        coord.enqueue(_spec("j-new"))
    after = _coord_states(state)  # still loads after the follow-up write
    assert after["j-leased"] == {"coord-report": "shipped", "coord-release": "queued"}.get(op, after["j-leased"])
    return "done" if outcome else "not done"


def _check_queue(op: str, state: Path) -> str:
    queue = LocalQueue(state).init()
    where: dict[str, list[str]] = {}
    for st in State:
        for path in queue.dir(st).iterdir():
            if path.is_dir():
                where.setdefault(path.name, []).append(st.value)
    assert all(len(v) == 1 for v in where.values()), f"a job in two states: {where}"
    assert set(SEEDED) <= set(where), f"a job lost: {where}"
    for entry in queue.iter_all():  # every job directory loads
        assert entry.job.id == entry.path.name
    queue.normalise_inbox()  # never raises on what a crash left behind
    if op == "queue-move":
        assert where["j-leased"] in (["running"], ["shipped"])
        return "done" if where["j-leased"] == ["shipped"] else "not done"
    if op == "queue-enqueue":
        return "done" if "j-new" in where else "not done"
    ids = {p.name for st in State for p in queue.dir(st).iterdir()}
    assert "j-loose" in ids, "the loose inbox file was lost"
    return "done" if "j-loose" in where else "not done"


OPS = ["coord-report", "coord-release", "coord-claim", "coord-enqueue", "queue-move", "queue-enqueue", "queue-adopt"]


@pytest.mark.parametrize("op", OPS)
def test_kill_at_every_step_leaves_a_whole_state(op: str, tmp_path: Path) -> None:
    base = tmp_path / "base"
    _seed(op, base)
    probe = tmp_path / "probe"
    _copy(base, probe)
    counted = _run_child(op, probe, 0, "never")
    assert counted.returncode == 0, counted.stderr
    steps = int(counted.stdout.strip().rsplit("steps=", 1)[1])
    assert steps >= 2, f"{op}: expected several durable steps, saw {steps}"
    outcomes = set()
    for k in range(1, steps + 1):
        for when in ("before", "after"):
            state = tmp_path / f"k{k}-{when}"
            _copy(base, state)
            proc = _run_child(op, state, k, when)
            assert proc.returncode == -signal.SIGKILL, f"{op} step {k} {when}: not killed ({proc.stderr})"
            check = _check_coord if op.startswith("coord-") else _check_queue
            outcomes.add(check(op, state))
    # The kill points straddle the commit: some crashes lose the op (never acknowledged), later ones keep it.
    assert outcomes == {"done", "not done"}, f"{op}: outcomes {outcomes}"


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, symlinks=True)


def test_stale_hot_copy_of_an_archived_job_never_wedges_the_coordinator(tmp_path: Path) -> None:
    """Regression: a crash between the archive write and the hot write left a leased copy in the hot file;
    once its lease expired on the last attempt the reaper tried to archive it again and every operation failed."""
    from agent_queue.fsutil import write_json_atomic

    state = tmp_path / "coord"
    coord = Coordinator(JsonStore(state), lambda: T0, TTL)
    coord.enqueue({**_spec("a"), "budget": {"maxAttempts": 1}})
    assert coord.claim("f1", []) is not None
    before = json.loads((state / "state.json").read_text())
    coord.report("a", "f1", 1, "shipped", {})
    write_json_atomic(state / "state.json", before)  # the hot write "never happened"
    later = Coordinator(JsonStore(state), lambda: T0 + 10 * TTL, TTL)
    assert later.reap() == []  # not a reclaim: the job finished
    assert later.claim("f2", []) is None
    assert [(j["job"]["id"], j["meta"]["state"]) for j in later.list_jobs()] == [("a", "shipped")]
    assert later.status()["leases"] == []

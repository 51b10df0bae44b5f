"""The command seam through real `coordinator-stub call` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.stubutil import STUB_ARGV, seam_call, seam_command, stub_env


def answer(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1  # exactly one JSON object
    out: dict[str, object] = json.loads(lines[0])
    return out


def test_call_round_trip_and_errors_are_responses(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    assert answer(seam_call(state, "POST", "/v1/fleet/jobs", '{"id":"a","command":["true"]}'))["status"] == 201
    got = answer(seam_call(state, "POST", "/v1/fleet/claim", '{"factoryId":"f1"}'))
    assert got["status"] == 200
    assert answer(seam_call(state, "POST", "/v1/fleet/claim", '{"factoryId":"f1"}')) == {"status": 204, "body": None}
    fenced = answer(seam_call(state, "POST", "/v1/fleet/jobs/a/renew", '{"factoryId":"f2","leaseEpoch":1}'))
    assert fenced["status"] == 409
    assert fenced["body"]["error"]["code"] == "fenced"  # type: ignore[index]
    assert answer(seam_call(state, "POST", "/v1/fleet/claim", "{oops"))["status"] == 400
    assert answer(seam_call(state, "GET", "/v1/fleet/jobs?state=leased"))["status"] == 200


def test_missing_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([*STUB_ARGV, "call", "GET", "/v1/fleet/status"], capture_output=True,
                          env=stub_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert b"AQ_STUB_STATE" in proc.stderr and proc.stdout == b""


def test_ignore_dry_run_hands_out_a_real_lease(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    seam_call(state, "POST", "/v1/fleet/jobs", '{"id":"a","command":["true"]}')
    body = '{"factoryId":"f1-shadow","dryRun":true}'
    dry = answer(seam_call(state, "POST", "/v1/fleet/claim", body))
    assert dry["body"]["lease"] is None  # type: ignore[index]
    real = answer(seam_call(state, "POST", "/v1/fleet/claim", body, extra_args=["--ignore-dry-run"]))
    assert real["body"]["lease"]["leaseEpoch"] == 1  # type: ignore[index]


def test_fast_path_imports_neither_click_nor_requests(tmp_path: Path) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['coordinator-stub', '--state', sys.argv[1], 'call', 'GET', '/v1/fleet/status']\n"
        "try:\n    runpy.run_module('coordinator_stub', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('click', 'requests', 'filelock', 'dataclasses') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, env=stub_env(),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "[]"


# Not needed to answer a call, and each costs milliseconds of every seam process (B1): pathlib (with the
# urllib.parse and ipaddress it imports), typing, logging, and the composite rules for a plain job; threading
# and group commit, which only ``serve`` uses; re, enum, json and contextlib, with the functools and
# collections they import (the seam uses agent_queue.cjson and agent_queue.ctxlib instead).
NOT_ON_THE_CALL_PATH = {"pathlib", "urllib", "urllib.parse", "ipaddress", "typing", "logging", "dataclasses",
                        "coordinator_stub.composite_rules", "agent_queue.plan_job", "threading",
                        "coordinator_stub.stores.group_commit", "re", "enum", "json", "contextlib", "functools",
                        "collections", "collections.abc"}
# The installed command, as users and B1 run it (not ``-m``: runpy imports contextlib on its own).
INSTALLED_STUB = os.path.join(os.path.dirname(sys.executable), "coordinator-stub")


def imported_by(argv: list[str], body: str = "") -> set[str]:
    """Every module the process ``python -X importtime *argv`` imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], input=body.encode(), capture_output=True,
                          env=stub_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}


def imported_by_call(state: Path, method: str, path: str, body: str) -> set[str]:
    """Every module one ``coordinator-stub call`` process imports."""
    return imported_by([INSTALLED_STUB, "--state", str(state), "call", method, path], body)


def test_the_installed_command_answers_and_exits_with_the_seam_s_codes(tmp_path: Path) -> None:
    """The script ``pip install`` puts in the venv's bin (not an entry point), which ends a seam call with os._exit."""
    state = tmp_path / "coord"
    made = subprocess.run([INSTALLED_STUB, "--state", str(state), "call", "POST", "/v1/fleet/jobs"],
                          input=b'{"id":"a","command":["true"]}', capture_output=True, env=stub_env(), timeout=60)
    assert answer(made)["status"] == 201
    bad = subprocess.run([INSTALLED_STUB, "--state", str(state), "call", "POST", "/v1/fleet/claim"],
                         input=b"{oops", capture_output=True, env=stub_env(), timeout=60)
    assert answer(bad)["body"]["error"]["message"].startswith("request body: malformed JSON (")  # type: ignore[index]
    usage = subprocess.run([INSTALLED_STUB, "call", "GET", "/v1/fleet/status"], capture_output=True,
                           env=stub_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert (usage.returncode, usage.stdout) == (2, b"") and b"AQ_STUB_STATE" in usage.stderr
    helped = subprocess.run([INSTALLED_STUB, "--help"], capture_output=True, env=stub_env(), timeout=60)
    assert helped.returncode == 0 and b"Usage: coordinator-stub" in helped.stdout


def test_a_seam_call_imports_only_what_answers_it(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    seam_call(state, "POST", "/v1/fleet/jobs", '{"id":"a","command":["true"]}')
    fence = '"factoryId":"f1","leaseEpoch":1'
    calls = [("GET", "/v1/fleet/healthz", ""), ("POST", "/v1/fleet/claim", '{"factoryId":"f1"}'),
             ("POST", "/v1/fleet/jobs/a/renew", "{" + fence + "}"),
             ("POST", "/v1/fleet/jobs/a/report", "{" + fence + ',"outcome":"shipped","detail":{}}')]
    at_start_up = imported_by(["-c", "pass"])  # what the interpreter imports anyway (site) is not the seam's
    for method, path, body in calls:
        names = imported_by_call(state, method, path, body)
        assert "coordinator_stub.seam" in names  # the report was read (else the check below proves nothing)
        assert names & (NOT_ON_THE_CALL_PATH - at_start_up) == set(), (method, path)
    assert answer(seam_call(state, "GET", "/v1/fleet/jobs/a"))["body"]["meta"]["state"] == "shipped"  # type: ignore[index]


def test_seam_command_is_a_shell_split_argv(tmp_path: Path) -> None:
    import shlex

    argv = shlex.split(seam_command(tmp_path / "with space"))
    proc = subprocess.run([*argv, "GET", "/v1/fleet/healthz"], capture_output=True, env=stub_env(),
                          stdin=subprocess.DEVNULL)
    assert answer(proc) == {"status": 200, "body": {"ok": True}}


def test_four_processes_claim_200_jobs_exactly_once(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    jobs = [{"id": f"j{i:03d}", "command": ["true"]} for i in range(200)]
    # enqueue in-process on the same directory (fast); the claims race through real processes
    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.file import JsonStore

    coord = Coordinator(JsonStore(state), __import__("time").time, 60)
    for spec in jobs:
        coord.enqueue(spec)

    claimed = claim_race(str(state), 4)
    assert sorted(claimed) == sorted(j["id"] for j in jobs)  # every job exactly once
    hot = JsonStore(state).read_hot()  # snapshot plus journal still parse
    assert all(rec["state"] == "leased" and rec["leaseEpoch"] == 1 for rec in hot["jobs"].values())
    claims = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    assert sum(1 for e in claims if e["op"] == "claim" and e["status"] == 200) == 200


def claim_race(state: str, procs: int) -> list[str]:
    """``procs`` workers, each claiming through real seam processes until 204; every id claimed, in any order."""
    worker = (
        "import json, subprocess, sys\n"
        "argv = sys.argv[1:]\n"
        "got = []\n"
        "while True:\n"
        "    p = subprocess.run(argv, input=json.dumps({'factoryId': FACTORY}).encode(), capture_output=True)\n"
        "    out = json.loads(p.stdout)\n"
        "    if out['status'] == 204: break\n"
        "    got.append(out['body']['job']['id'])\n"
        "print(json.dumps(got))\n"
    )

    def run(n: int) -> list[str]:
        argv = [*STUB_ARGV, f"--state={state}", "call", "POST", "/v1/fleet/claim"]
        code = worker.replace("FACTORY", repr(f"f{n}"))
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, env=stub_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        return list(json.loads(proc.stdout))

    with ThreadPoolExecutor(procs) as pool:
        results = list(pool.map(run, range(procs)))
    return [j for r in results for j in r]


@pytest.mark.postgres
def test_four_seam_processes_on_postgres_claim_100_jobs_exactly_once(pg_url: str) -> None:
    """Each seam call is a process that imports psycopg and connects: 100 jobs keep it near 15 s."""
    from coordinator_stub.core import Coordinator
    from tests.pgutil import inspect_store

    store = inspect_store(pg_url)
    coord = Coordinator(store, store.clock, 60)
    jobs = [f"p{i:03d}" for i in range(100)]
    for job_id in jobs:
        coord.enqueue({"id": job_id, "command": ["true"]})
    claimed = claim_race(pg_url, 4)
    assert sorted(claimed) == jobs  # every job exactly once
    hot = store.hot["jobs"]
    assert len(hot) == 100 and all(rec["state"] == "leased" and rec["leaseEpoch"] == 1 for rec in hot.values())
    assert sum(1 for e in store.events if e["op"] == "claim" and e["status"] == 200) == 100
    store.close()

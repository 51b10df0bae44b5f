"""`agent-queue replan ID --fleet`: a real `serve`, two real daemons, the fake planner on the caller's host.

The coordinator's rules per store are in tests/unit/test_replan_fleet.py; here the whole path runs, and
the endpoint's answers are checked against docs/openapi.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from cli_support import aq, wait_for
from fleet_support import daemons, fleet_env
from planner_support import answer, configure, prompt_of, runs, shell
from test_stub_http import check

from tests.stubutil import running_stub

TOKEN = "replan-t0ken"


def job(stub_url: str, job_id: str) -> dict[str, Any]:
    got = requests.get(f"{stub_url}/v1/fleet/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=10)
    body: dict[str, Any] = check(got, 200)
    return body


def test_replan_fleet_keeps_the_shipped_children_and_their_history_on_two_factories(tmp_path: Path) -> None:
    script, log = tmp_path / "planner", tmp_path / "runs.log"
    roots = [tmp_path / "f1", tmp_path / "f2"]
    failing = {**shell("b", log), "command": ["sh", "-c", f"echo b >> {log}; exit 3"], "dependsOn": ["a"],
               "budget": {"maxAttempts": 1}}
    first = answer([shell("a", log), failing, shell("c", log, dependsOn=["b"])])
    redefines_a = answer([shell("a", log), shell("b2", log, dependsOn=["a"])])
    good = answer([shell("b2", log, dependsOn=["a"]), shell("c", log, dependsOn=["b2"])])
    for root in roots:
        configure(root, script, [first, redefines_a, good])
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=30) as stub:
        env = fleet_env(api=stub.url, token=TOKEN)
        res = aq(roots[0], "plan", "--tool", "planner", "--id", "epic", "--out", str(tmp_path / "epic.json"),
                 "--enqueue", "--yes", "--fleet", "Build it", env=env)
        assert res.returncode == 0, res.stderr
        res = aq(roots[0], "replan", "epic", "--fleet", "--tool", "planner", "--yes", env=env)
        assert res.returncode == 2 and "only a composite with quarantined children is re-planned" in res.stderr
        assert runs(script) == 1  # refused before any planner ran

        with daemons() as ds:
            for i, root in enumerate(roots, 1):
                ds.start(root, env, factory=f"f{i}")
            wait_for(lambda: job(stub.url, "epic")["rollup"]["state"] == "quarantined", "b to fail", deadline_s=60)
            a_before = job(stub.url, "epic.a")
            assert log.read_text().split() == ["a", "b"]

            res = aq(roots[1], "replan", "epic", "--fleet", "--tool", "planner", "--prompt",
                     "b cannot work; use b2", "--yes", env=env)
            assert res.returncode == 0, res.stderr
            assert "already shipped: it is kept as it is" in res.stderr  # try 1 redefined a: refused, retried
            assert res.stdout.strip().splitlines()[-1] == "epic: re-planned, queued epic.b2, epic.c"
            seen = prompt_of(script, 3)  # what the coordinator said happened, as the planner saw it
            assert "epic.a: SHIPPED (kept)" in seen and "Note for this re-plan: b cannot work; use b2" in seen
            assert "epic.b: FAILED after 1 attempt(s): tool: exited with status 3 (attempt 1 of 1)" in seen
            assert "epic.c: did not run (queued)" in seen

            wait_for(lambda: job(stub.url, "epic")["rollup"]["state"] == "shipped", "the re-plan to ship",
                     deadline_s=60)
        roll = job(stub.url, "epic")["rollup"]
        assert [c["id"] for c in roll["children"]] == ["epic.a", "epic.b2", "epic.c"]
        assert log.read_text().split() == ["a", "b", "b2", "c"]  # a never ran again
        assert job(stub.url, "epic.a") == a_before  # its record and lease history untouched
        assert job(stub.url, "epic.b")["meta"]["state"] == "quarantined"  # replaced, kept with its history
        assert roll["budget"]["spentS"] > 0
        assert roll["budget"]["costUsd"] == 0.02  # the re-plan's two planner runs, on the caller's host

        res = aq(roots[0], "replan", "epic", "--fleet", "--tool", "planner", "--yes", env=env)
        assert res.returncode == 2 and "is shipped; only a composite with quarantined children" in res.stderr


def test_the_replan_endpoint_answers_as_documented(tmp_path: Path) -> None:
    with running_stub(tmp_path / "coord", token=TOKEN, lease_ttl_s=30) as stub, requests.Session() as http:
        http.headers.update(stub.headers())
        base = stub.url + "/v1/fleet"
        kid = {"id": "k1", "command": ["false"], "budget": {"maxAttempts": 1}}
        check(http.post(base + "/jobs", json={"id": "ep", "kind": "composite", "children": [kid]}), 201)
        new = {"spec": {"id": "ep", "children": [{"id": "k2", "command": ["true"]}]}}
        refused = check(http.post(base + "/jobs/ep/replan", json=new), 409)
        assert "no child is quarantined" in refused["error"]["message"]
        got = check(http.post(base + "/claim", json={"factoryId": "m1"}), 200)
        rep = {"factoryId": "m1", "leaseEpoch": got["lease"]["leaseEpoch"], "outcome": "quarantined"}
        check(http.post(base + "/jobs/k1/report", json=rep), 200)
        check(http.post(base + "/jobs/ep/replan", json={"spec": {"id": "other", "children": []}}), 400)
        check(http.post(base + "/jobs/ep/replan", json={"spec": {"children": [{"id": "x", "dependsOn": ["x"],
                                                                               "command": ["true"]}]}}), 422)
        check(http.post(base + "/jobs/nope/replan", json={"spec": {"children": new["spec"]["children"]}}), 404)
        body = check(http.post(base + "/jobs/ep/replan", json={**new, "planSpent": {"spentS": 2, "costUsd": 0.5}}),
                     200)
        assert body["queued"] == ["k2"] and body["rollup"]["state"] == "queued"
        assert body["rollup"]["budget"]["costUsd"] == 0.5

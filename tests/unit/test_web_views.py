"""The dashboard's pure views: redaction, queue pages, lease histories and 409 stories, DAG layout, shadow rate."""

from __future__ import annotations

from typing import Any

from agent_queue.timeutil import parse_rfc3339
from coordinator_stub.web.views import dag, leases, redact, select_events, select_rows, shadow, story


def test_redaction_keeps_the_shape_and_drops_every_secret() -> None:
    spec = {"id": "a", "env": {"HOME": "/h", "API_KEY": "k"}, "prompt": "fix it", "command": ["echo", "hi"],
            "repo": "https://bob:pw@git.example/r.git", "budget": {"maxAttempts": 2},
            "extra": {"githubToken": "t", "nested": [{"password": "p"}], "authHeader": "Bearer x"}}
    out = redact(spec)
    assert out["env"] == {"HOME": "<redacted>", "API_KEY": "<redacted>"}
    assert out["repo"] == "https://<redacted>@git.example/r.git"
    assert out["extra"] == {"githubToken": "<redacted>", "nested": [{"password": "<redacted>"}],
                            "authHeader": "<redacted>"}
    assert out["prompt"] == "fix it" and out["command"] == ["echo", "hi"] and out["budget"] == {"maxAttempts": 2}
    assert spec["env"]["API_KEY"] == "k"  # a copy
    assert redact({"env": [["A", "1"]]}) == {"env": [["A", "<redacted>"]]}


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"j{i:03d}", "state": "leased" if i % 10 == 0 else "queued", "kind": "leaf",
             "factory": "f1" if i % 10 == 0 else None, "reason": "timeout" if i == 7 else None} for i in range(n)]


def test_a_queue_page_counts_filters_and_clamps() -> None:
    page = select_rows(rows(120), size=50, page=3)
    assert page["total"] == 120 and page["pages"] == 3 and [r["id"] for r in page["rows"]][0] == "j100"
    assert page["counts"]["leased"] == 12 and page["counts"]["queued"] == 108
    assert select_rows(rows(120), page=99)["page"] == 3 and select_rows(rows(120), page=-1)["page"] == 1
    assert select_rows(rows(120), state="leased")["total"] == 12
    assert [r["id"] for r in select_rows(rows(120), text="TIMEOUT")["rows"]] == ["j007"]
    assert select_rows(rows(120), factory="f1", state="queued")["total"] == 0
    assert select_rows([], size=0)["pages"] == 1
    assert len(select_rows(rows(1200), size=10_000)["rows"]) == 500  # never everything in one page


EVENTS = [
    {"op": "enqueue", "jobId": "j", "status": 201, "time": "T0"},
    {"op": "claim", "jobId": "j", "factoryId": "z", "leaseEpoch": 1, "status": 200, "time": "T1", "expiresAt": "T4"},
    {"op": "renew", "jobId": "j", "factoryId": "z", "leaseEpoch": 1, "status": 200, "time": "T2", "expiresAt": "T5"},
    {"op": "claim", "jobId": "j", "factoryId": "s", "leaseEpoch": 0, "status": 200, "dryRun": True, "time": "T2"},
    {"op": "reclaim", "jobId": "j", "factoryId": "z", "leaseEpoch": 1, "status": 200, "time": "T6", "state": "queued"},
    {"op": "claim", "jobId": "j", "factoryId": "f", "leaseEpoch": 2, "status": 200, "time": "T6", "expiresAt": "T9"},
    {"op": "report", "jobId": "j", "factoryId": "z", "leaseEpoch": 1, "status": 409, "code": "fenced", "time": "T7",
     "outcome": "shipped"},
    {"op": "report", "jobId": "j", "factoryId": "f", "leaseEpoch": 2, "status": 200, "time": "T8",
     "outcome": "shipped"},
    {"op": "report", "jobId": "j", "factoryId": "f", "leaseEpoch": 2, "status": 200, "time": "T8",
     "outcome": "shipped", "replay": True},
]


def test_a_job_s_leases_and_the_story_of_its_409() -> None:
    history = leases(EVENTS)
    assert [(x["epoch"], x["factoryId"], x["renewals"], x["end"]["op"]) for x in history] == [
        (1, "z", 1, "reclaim"), (2, "f", 0, "report")]
    assert history[0]["expiresAt"] == "T5" and history[0]["refused"][0]["code"] == "fenced"
    (told,) = story(history)
    assert told.startswith("T7: report(shipped) by z with epoch 1 refused (fenced)")
    assert "the reaper reclaimed it" in told and "epoch 2 was held by f since T6" in told


def test_a_dag_is_layered_by_dependencies_and_phases() -> None:
    def child(i: str, deps: list[str] | None = None, phase: int | None = None) -> dict[str, Any]:
        return {"job": {"id": i, "dependsOn": deps or [], **({"phase": phase} if phase is not None else {})}}

    parent = {"job": {"id": "p", "childIds": ["a", "b", "c", "d", "e"]},
              "rollup": {"state": "running", "children": [{"id": "a", "state": "shipped"},
                                                          {"id": "b", "state": "running"}]}}
    kids = [child("a"), child("b", ["a"]), child("c", ["a"]), child("d", ["b", "c"]), child("e", phase=1)]
    out = dag(parent, kids)
    layer = {n["id"]: (n["layer"], n["row"]) for n in out["nodes"]}
    assert layer == {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (2, 0), "e": (3, 0)}  # phase 1 after phase 0
    assert sorted(map(tuple, out["edges"])) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    assert {n["id"]: n["state"] for n in out["nodes"]}["b"] == "running"
    assert {n["id"]: n["state"] for n in out["nodes"]}["d"] == "queued"  # not in the rollup yet
    assert out["layers"] == 4 and out["rows"] == 2


def test_a_planned_composite_draws_its_planned_children_before_approval() -> None:
    plan = {"state": "planned", "dag": [{"id": "p.a", "dependsOn": [], "state": "planned"},
                                        {"id": "p.b", "dependsOn": ["p.a"], "state": "planned"}]}
    parent = {"job": {"id": "p", "childIds": ["p.plan-1"]},
              "rollup": {"state": "planned", "children": [{"id": "p.plan-1", "state": "shipped"}], "plan": plan}}
    out = dag(parent, [{"job": {"id": "p.plan-1", "dependsOn": []}}])
    assert [(n["id"], n["state"]) for n in out["nodes"]] == [("p.plan-1", "shipped"), ("p.a", "planned"),
                                                            ("p.b", "planned")]
    assert out["edges"] == [["p.a", "p.b"]]


def test_the_shadow_rate_leaves_idle_out_and_buckets_by_time() -> None:
    now = parse_rfc3339("2026-01-01T01:00:00Z")
    reports = [{"verdict": v, "receivedAt": t, "factoryId": "s", "localJobId": "a", "coordJobId": "b"} for v, t in (
        ("AGREE", "2026-01-01T00:10:00Z"), ("DIVERGE", "2026-01-01T00:12:00Z"), ("IDLE", "2026-01-01T00:13:00Z"),
        ("AGREE", "2026-01-01T00:58:00Z"), ("COORD_EMPTY", "2025-12-31T00:00:00Z"))]
    out = shadow(reports, now, bucket_s=600, buckets=6)
    assert (out["total"], out["agree"]) == (4, 2) and out["rate"] == 0.5
    assert [(b["total"], b["agree"]) for b in out["series"]] == [(0, 0), (2, 1), (0, 0), (0, 0), (0, 0), (1, 1)]
    assert [d["verdict"] for d in out["divergences"]] == ["COORD_EMPTY", "DIVERGE"]  # newest first


def test_event_filters_and_cursor() -> None:
    evs = [{**e, "seq": i + 1} for i, e in enumerate(EVENTS)]
    assert [e["seq"] for e in select_events(evs, status="409")] == [7]
    assert [e["seq"] for e in select_events(evs, status="2xx", op="claim")] == [6, 4, 2]
    assert [e["seq"] for e in select_events(evs, factory="z", before=5)] == [3, 2]
    assert len(select_events(evs, limit=2)) == 2

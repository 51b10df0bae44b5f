"""A PostgreSQL-backed ``serve`` beyond the fleet API: its health check and what its dashboard and metrics read.

healthz asks the database (``Store.check``): while the database is down a
balancer must see 503 ``store_unavailable`` and send factories to a replica
that answers, and 200 again once it is back. The test stops and starts a
throwaway cluster it made itself, never the shared server.

The dashboard's events and shadow views and the metrics' counters read the
store's logs (``Store.log_readers``): on PostgreSQL the ``aq_events`` and
``aq_shadow_reports`` tables, so a replica shows what every replica did.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from cli_support import wait_for
from prometheus_client.parser import text_string_to_metric_families

from tests.pgutil import Cluster, need_psycopg, reset
from tests.stubutil import RunningStub, running_stub

need_psycopg()
pytestmark = pytest.mark.postgres
TOKEN, READ = "pg-serve-token", "pg-serve-read-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def healthz(stub: RunningStub) -> tuple[int, Any]:
    r = requests.get(stub.url + "/v1/fleet/healthz", timeout=30)
    body = r.json()
    body.pop("features", None)  # what serve supports beyond the contract (held claims): not this test's subject
    return r.status_code, body


def test_healthz_is_503_while_the_database_is_down_and_200_once_it_is_back(tmp_path: Path) -> None:
    cluster = Cluster(free_port()).start()
    try:
        from coordinator_stub.stores.pg_admin import migrate_database

        migrate_database(cluster.url)
        with running_stub(cluster.url, token=TOKEN) as stub:
            assert healthz(stub) == (200, {"ok": True})
            cluster.halt()
            status, body = wait_for(lambda: (got := healthz(stub))[0] != 200 and got, "healthz to see it down")
            assert status == 503 and body["error"]["code"] == "store_unavailable", body
            assert "127.0.0.1" in body["error"]["message"]  # names the database (never a password)
            cluster.resume()
            wait_for(lambda: healthz(stub) == (200, {"ok": True}), "healthz to see it back", deadline_s=60)
            r = requests.post(stub.url + "/v1/fleet/jobs", json={"id": "after", "command": ["true"]},
                              headers=stub.headers(), timeout=30)
            assert r.status_code == 201, r.text  # and operations go on
    finally:
        cluster.stop()


def test_the_dashboard_and_metrics_read_every_replicas_events_from_the_database(pg_database: str) -> None:
    reset(pg_database)
    env = {"AQ_READ_TOKEN": READ}
    with running_stub(pg_database, token=TOKEN, extra_env=env) as shown, \
            running_stub(pg_database, token=TOKEN, extra_env=env) as other:
        api, auth = other.url + "/v1/fleet", other.headers()  # everything happens on the other replica
        assert requests.post(api + "/jobs", json={"id": "j1", "command": ["true"]}, headers=auth,
                             timeout=30).status_code == 201
        lease = requests.post(api + "/claim", json={"factoryId": "f1"}, headers=auth, timeout=30).json()["lease"]
        late = requests.post(api + "/jobs/j1/report", headers=auth, timeout=30,
                             json={"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"] + 1, "outcome": "shipped"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "fenced"
        requests.post(api + "/jobs/j1/report", headers=auth, timeout=30,
                      json={"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped"}
                      ).raise_for_status()
        for verdict in ("AGREE", "AGREE", "DIVERGE"):
            r = requests.post(api + "/shadow-reports", headers=auth, timeout=30,
                              json={"factoryId": "f1", "shadow": True, "verdict": verdict, "localJobId": "l1",
                                    "coordJobId": "j1", "at": "2026-01-01T00:00:00Z"})
            assert r.status_code == 202, r.text

        read = {"Authorization": f"Bearer {READ}"}
        events = requests.get(shown.url + "/ui/api/events", headers=read, timeout=30).json()["events"]
        ops = sorted((e["op"], e.get("status")) for e in events if e.get("jobId") == "j1")
        assert ("enqueue", 201) in ops and ("claim", 200) in ops and ("report", 409) in ops and ("report", 200) in ops
        job = requests.get(shown.url + "/ui/api/jobs/j1", headers=read, timeout=30).json()
        first = next(lease for lease in job["leases"] if lease["epoch"] == 1)
        assert first["factoryId"] == "f1" and first["end"]["result"] == "shipped"
        shadow = requests.get(shown.url + "/ui/api/shadow", headers=read, timeout=30).json()
        assert (shadow["total"], shadow["agree"]) == (3, 2)
        assert [d["verdict"] for d in shadow["divergences"]] == ["DIVERGE"]

        # The metrics count what happens while this replica serves: a claim done on the other one counts too.
        before = claims_counted(shown)
        assert requests.post(api + "/jobs", json={"id": "j2", "command": ["true"]}, headers=auth,
                             timeout=30).status_code == 201
        assert requests.post(api + "/claim", json={"factoryId": "f2"}, headers=auth, timeout=30).status_code == 200
        assert claims_counted(shown) == before + 1


def claims_counted(stub: RunningStub) -> float:
    """``aq_operations_total{op="claim",outcome="leased"}`` as this replica's /metrics says."""
    text = requests.get(stub.url + "/metrics", headers={"Authorization": f"Bearer {READ}"}, timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aq_operations_total" and s.labels == {"op": "claim", "outcome": "leased"}:
                return float(s.value)
    return 0.0

"""``/metrics``: the coordinator in the Prometheus text format (docs/metrics.md lists every series).

Operation counters and the lease histograms come from ``events.jsonl`` (every
process on the state writes it, see ``events``), so they see seam and
embedded factories too. The state gauges come from one ``status`` per scrape.
Request and store-operation latency are this process's own. Series names
follow Prometheus' conventions (``_total`` counters, ``_seconds``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from agent_queue.timeutil import parse_rfc3339

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LEASE_AGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
RECLAIM_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
CLAIMS_REMEMBERED = 100_000  # claim times of leases not yet ended (for their age when they end)
_ENDS = ("report", "release", "reclaim")


def outcome(event: Mapping[str, Any]) -> str:
    """The outcome label of one event line: its error code, else what the operation did."""
    if int(event.get("status", 200)) >= 400:
        return str(event.get("code") or "error")
    if event.get("replay"):
        return "replay"
    op = event.get("op")
    if op == "claim":
        return "dry_run" if event.get("dryRun") else ("empty" if event.get("status") == 204 else "leased")
    if op in ("release", "reclaim"):
        return str(event.get("state") or "ok")
    if op == "report":
        return str(event.get("outcome") or "ok")
    if op == "enqueue":
        return "created" if event.get("status") == 201 else "exists"
    if op == "shadow_report":
        return str(event.get("verdict") or "ok").lower()
    return "ok"


class Metrics:
    """The registry of one ``serve`` process and what feeds it."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide: the *_created series only double the output here
        r = self.registry = CollectorRegistry()
        self.operations = Counter("aq_operations", "Coordinator operations by outcome (every process on the state)",
                                  ["op", "outcome"], registry=r)
        self.conflicts = Counter("aq_conflicts", "409 answers: fenced, not_leased, conflict", ["op", "code"],
                                 registry=r)
        self.held_claims = Gauge("aq_held_claims", "Claims held open (waitS) waiting for a claimable job",
                                 registry=r)
        self.connections = Gauge("aq_http_connections",
                                 "Open HTTP connections of this serve (bound: --max-connections)", registry=r)
        self.lease_age = Histogram("aq_lease_age_seconds", "Age of a lease when it ended", ["end"],
                                   buckets=LEASE_AGE_BUCKETS, registry=r)
        self.reclaim_delay = Histogram("aq_reclaim_delay_seconds", "From a lease's expiry to its reclaim",
                                       buckets=RECLAIM_DELAY_BUCKETS, registry=r)
        self.requests = Histogram("aq_http_request_duration_seconds", "HTTP requests, until the answer is sent",
                                  ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_ops = Histogram("aq_store_operation_duration_seconds", "Store operations of serve, lock included",
                                   ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.jobs = Gauge("aq_jobs", "Jobs by state", ["state"], registry=r)
        self.leases = Gauge("aq_leases", "Live leases", registry=r)
        self.factory_leases = Gauge("aq_factory_leases", "Live leases per factory", ["factory"], registry=r)
        self.factory_seen = Gauge("aq_factory_last_seen_timestamp_seconds",
                                  "When a factory last claimed, renewed, released or reported", ["factory"],
                                  registry=r)
        self.lease_ttl = Gauge("aq_lease_ttl_seconds", "The coordinator's lease time-to-live", registry=r)
        self.oldest_lease = Gauge("aq_lease_oldest_age_seconds", "Age of the oldest live lease whose claim was seen",
                                  registry=r)
        self._claimed: OrderedDict[tuple[str, int], float] = OrderedDict()

    # ------------------------------------------------------------ feeds

    def on_event(self, event: Mapping[str, Any], live: bool) -> None:
        """One line of events.jsonl; history (``live`` False) only teaches claim times."""
        op, status = str(event.get("op", "")), int(event.get("status", 200))
        key = (str(event.get("jobId", "")), int(event.get("leaseEpoch") or 0))
        ts = float(event.get("ts", 0.0))
        if op == "claim" and status == 200 and not event.get("dryRun") and not event.get("replay"):
            self._claimed[key] = ts
            while len(self._claimed) > CLAIMS_REMEMBERED:
                self._claimed.popitem(last=False)
        if not live:
            return
        self.operations.labels(op, outcome(event)).inc()
        if status == 409:
            self.conflicts.labels(op, str(event.get("code") or "conflict")).inc()
        if op in _ENDS and status == 200 and not event.get("replay"):
            claimed = self._claimed.pop(key, None)
            if claimed is not None:
                self.lease_age.labels(op).observe(max(0.0, ts - claimed))
        if op == "reclaim" and isinstance(event.get("expiresAt"), str):
            self.reclaim_delay.observe(max(0.0, ts - parse_rfc3339(event["expiresAt"])))

    def on_status(self, status: Mapping[str, Any], now: float | None = None) -> None:
        """The state gauges from one ``status`` answer."""
        now = time.time() if now is None else now
        for state, n in status["counts"].items():
            self.jobs.labels(state).set(n)
        leases = status["leases"]
        self.leases.set(len(leases))
        held: dict[str, int] = {}
        oldest = 0.0
        for lease in leases:
            held[lease["factoryId"]] = held.get(lease["factoryId"], 0) + 1
            claimed = self._claimed.get((lease["jobId"], int(lease["leaseEpoch"])))
            if claimed is not None:
                oldest = max(oldest, now - claimed)
        self.oldest_lease.set(oldest)
        for factory in status["factories"]:
            name = factory["factoryId"]
            self.factory_seen.labels(name).set(parse_rfc3339(factory["lastSeen"]))
            self.factory_leases.labels(name).set(held.get(name, 0))
        if "leaseTtlS" in status:
            self.lease_ttl.set(float(status["leaseTtlS"]))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).observe(seconds)

    def observe_store(self, op: str, seconds: float) -> None:
        self.store_ops.labels(op).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

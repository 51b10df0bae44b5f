#!/usr/bin/env python3
"""A deliberately BROKEN coordinator for the demo's tests: it hands a leased job to a second factory.

Same command line as ``coordinator-stub`` (``--state DIR --lease-ttl S call
METHOD PATH``). A claim from another factory while a job is on its first
lease takes that job over (new epoch) instead of leaving it alone, so two
factories execute it: the two-factory demo must then FAIL (a), which it
detects from the jobs' own marker files, not from the coordinator's word.
Lives under tests/ only: the product has no switch that weakens a guarantee.
"""

from __future__ import annotations

from typing import Any

from coordinator_stub.__main__ import main
from coordinator_stub.core import Coordinator
from coordinator_stub.records import view as job_view

_claim = Coordinator._claim


def double_claim(self: Coordinator, c: Any, factory_id: str, caps: frozenset[str], dry_run: bool,
                 request_id: str | None, skip: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    if not dry_run:
        for rec in c.tx.hot["jobs"].values():
            lease = rec.get("lease")
            if (rec["state"] == "leased" and lease and lease["factoryId"] != factory_id and rec["leaseEpoch"] == 1
                    and caps.issuperset(rec["spec"].get("requires", ()))):
                epoch = rec["leaseEpoch"] + 1  # the bug: the job is still leased to someone else
                rec.update(leaseEpoch=epoch, lease={
                    "factoryId": factory_id, "leaseEpoch": epoch, "expiresAt": c.now + self.lease_ttl_s,
                    "ttlS": self.lease_ttl_s, "requestId": request_id, "claimedAt": c.now})
                self._seen(c, factory_id)
                self._note_lease(c, rec)
                view: dict[str, Any] = job_view(c.tx, rec, c.now)
                return view
    return _claim(self, c, factory_id, caps, dry_run, request_id, skip)


Coordinator._claim = double_claim  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

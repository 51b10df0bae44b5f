#!/usr/bin/env python3
"""A deliberately BROKEN coordinator for the demo's tests: the real stub, minus the fence check.

Same command line as ``coordinator-stub`` (``--state DIR --lease-ttl S call
METHOD PATH``). A renew, release or report that the real core fences (409)
is answered 200 as if it had been accepted, so a zombie or a dead worker's
late report "succeeds": the two-factory demo must then FAIL (b) and (b').
Lives under tests/ only: the product has no switch that weakens fencing.
"""

from __future__ import annotations

import time
from typing import Any

from agent_queue.errors import Fenced, NotLeased
from coordinator_stub.__main__ import main
from coordinator_stub.core import Coordinator

_renew, _release, _report = Coordinator.renew, Coordinator.release, Coordinator.report


def renew(self: Coordinator, job_id: str, factory_id: str, epoch: int) -> dict[str, Any]:
    try:
        return _renew(self, job_id, factory_id, epoch)
    except (Fenced, NotLeased):
        now = time.time()
        from agent_queue.timeutil import to_rfc3339

        return {"lease": {"jobId": job_id, "factoryId": factory_id, "leaseEpoch": epoch,
                          "expiresAt": to_rfc3339(now + self.lease_ttl_s), "ttlS": self.lease_ttl_s}}


def release(self: Coordinator, job_id: str, factory_id: str, epoch: int, *args: Any, **kw: Any) -> dict[str, Any]:
    try:
        return _release(self, job_id, factory_id, epoch, *args, **kw)
    except (Fenced, NotLeased):
        return self.get_job(job_id)


def report(self: Coordinator, job_id: str, factory_id: str, epoch: int, *args: Any, **kw: Any) -> dict[str, Any]:
    try:
        return _report(self, job_id, factory_id, epoch, *args, **kw)
    except (Fenced, NotLeased):
        return self.get_job(job_id)


Coordinator.renew = renew  # type: ignore[method-assign]
Coordinator.release = release  # type: ignore[method-assign]
Coordinator.report = report  # type: ignore[method-assign]

if __name__ == "__main__":
    main()

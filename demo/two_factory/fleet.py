"""The stage the scenarios act on: two factories, one coordinator, and the ways to act, look and wait.

`Fleet` starts the daemons (`mac-1` with capability `macos`, `ubuntu-1`
with `linux`; each with its own root and working directory, sharing nothing
but the coordinator), enqueues marker jobs, and answers the questions the
scenarios ask: who holds a job, who executed it, who shipped it, what the
coordinator says about it. It judges nothing: the verdicts are the story's.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .api import ApiError
from .coordinators import open_coordinator
from .evidence import Evidence
from .knobs import DemoError, Knobs
from .markers import Execution, executions, job_command
from .processes import Factory
from .report import Timeline

FACTORIES = (("mac-1", "macos"), ("ubuntu-1", "linux"))
TICK_S = 0.1  # the demo's own polling
# Each daemon talks to the coordinator only (no shadow run, no local inbox first).
FLEET_ENV = {"AQ_FLEET": "1", "AQ_FLEET_ROUTE": "1", "AQ_FLEET_SHADOW": "0"}


class Fleet:
    def __init__(self, knobs: Knobs, base: Path, env: Mapping[str, str]) -> None:
        self.knobs = knobs
        self.run_id = uuid.uuid4().hex[:6]
        self.markers = base / "markers"
        self.markers.mkdir(parents=True)
        self.timeline = Timeline()
        self.factories = [Factory(name, cap, base) for name, cap in FACTORIES]
        self.base_env = {k: v for k, v in env.items() if not k.startswith("AQ_")}
        self.coordinator = open_coordinator(knobs, base, self.base_env)
        self.api = self.coordinator.api()
        self.evidence = Evidence(self.coordinator.events_path, self.coordinator.api)
        self._terminal: set[str] = set()

    @property
    def ttl_s(self) -> float:
        return self.coordinator.lease_ttl_s

    # -- start and stop -----------------------------------------------------------

    def connect(self) -> None:
        self.coordinator.start()

    def start(self) -> None:
        """Start both daemons and the evidence; DemoError (with its log) for a daemon that does not come up."""
        for f in self.factories:
            f.start({**self.base_env, **FLEET_ENV, **self.coordinator.daemon_env(f.name, f.capability)})
            self.note(f"started {f.name} (pid {f.pid}, capability {f.capability}, root {f.root})")
        self.evidence.start()
        for f in self.factories:
            if not self.wait(f"{f.name} to start", functools.partial(f.log_lines, "daemon started"), 20):
                raise DemoError(f"{f.name} did not start; its log ({f.log_path}):\n"
                                + f.log_path.read_text(errors="replace")[-2000:])

    def close(self) -> None:
        self.evidence.stop()
        for f in self.factories:
            f.stop()
        self.api.close()
        self.coordinator.close()

    # -- acting ---------------------------------------------------------------------

    def note(self, text: str, who: str = "demo") -> None:
        self.timeline.note(who, text)

    def enqueue(self, tag: str, requires: str | None = None) -> str:
        job_id = f"demo-{self.run_id}-{tag}"
        spec: dict[str, Any] = {"id": job_id, "tool": "shell",
                                "command": job_command(self.markers, job_id, self.knobs.job_seconds),
                                "budget": {"timeoutS": 120, "maxAttempts": 5}}
        if requires:
            spec["requires"] = [requires]
        self.api.enqueue(spec)
        self.note(f"enqueued {job_id}" + (f" (requires {requires})" if requires else ""))
        return job_id

    def late_report(self, job_id: str, factory: Factory, epoch: int) -> str:
        """Send `report(shipped)` for `factory`'s old lease, as its delayed message would arrive; the answer."""
        try:
            with self.coordinator.api(as_factory=factory.name) as api:
                answer = api.report(job_id, factory.name, epoch, "shipped",
                                    {"note": "late report of a dead worker, sent by the demo"})
        except ApiError as exc:
            return f"no answer: {exc.message}"
        return "200 accepted" if answer.status == 200 else f"{answer.status} {answer.code}".rstrip()

    def wait(self, what: str, cond: Callable[[], Any], timeout_s: float) -> Any:
        """Poll `cond` until truthy; None after `timeout_s` (the caller turns that into a FAIL)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(ApiError):
                value = cond()
                if value:
                    return value
            if time.monotonic() > deadline:
                self.note(f"gave up waiting ({timeout_s:.0f}s) for {what}")
                return None
            time.sleep(TICK_S)

    def phase_timeout(self, jobs: int = 1) -> float:
        return self.knobs.job_seconds * math.ceil(jobs / 2) * 2 + self.ttl_s + 10

    # -- looking ----------------------------------------------------------------------

    def other(self, name: str) -> Factory:
        return next(f for f in self.factories if f.name != name)

    def view(self, job_id: str) -> dict[str, Any]:
        return self.api.job(job_id)

    def meta(self, job_id: str) -> dict[str, Any]:
        meta = self.view(job_id).get("meta")
        return meta if isinstance(meta, dict) else {}

    def state(self, job_id: str) -> str:
        return str(self.meta(job_id).get("state"))

    def epoch(self, job_id: str) -> int:
        return int(self.meta(job_id).get("leaseEpoch") or 0)

    def terminal(self, *job_ids: str) -> bool:
        """Every job shipped or quarantined. Terminal is for good: a job is asked about until it is, no longer."""
        for j in job_ids:
            if j not in self._terminal and self.state(j) in ("shipped", "quarantined"):
                self._terminal.add(j)
        return all(j in self._terminal for j in job_ids)

    def shippers(self, job_id: str) -> list[str]:
        return [f.name for f in self.factories if f.shipped(job_id)]

    def executions(self, job_id: str) -> list[Execution]:
        def owner(cwd: str) -> str:
            return next((f.name for f in self.factories if f.owns(cwd)), f"unknown({cwd})")

        return executions(self.markers, job_id, owner)

    def holder(self, job_id: str) -> tuple[Factory, int, Execution] | None:
        """The factory holding `job_id` now, its epoch, and its running execution (marker).

        The markers are looked at first: they cost nothing, a question to the coordinator may cost a process.
        """
        running = [e for e in self.executions(job_id) if not e.finished]
        lease = self.view(job_id).get("lease") if running else None
        if not lease:
            return None
        runs = [e for e in running if e.factory == lease["factoryId"]]
        factory = next((f for f in self.factories if f.name == lease["factoryId"]), None)
        if factory is None or not runs:
            return None
        return factory, int(lease["leaseEpoch"]), runs[-1]

    def reaped(self, job_id: str, epoch: int) -> str | None:
        """Ask the reaper; the survivor's own claim may have run it first (it runs before every operation)."""
        for rec in self.api.reap():
            if rec.get("jobId") == job_id:
                text = f"/v1/fleet/reap reclaimed it from {rec.get('factoryId')} epoch {rec.get('leaseEpoch')}"
                self.note(text)
                return text
        view = self.view(job_id)
        lease, meta = view.get("lease"), view.get("meta", {})
        if (lease and int(lease["leaseEpoch"]) > epoch) or meta.get("state") in ("queued", "shipped"):
            events = self.evidence.reclaims(job_id)
            where = f" (event at {float(events[0]['ts']) - self.timeline.t0:.2f}s)" if events else ""
            return f"the reaper ran before another operation{where}; job now {meta.get('state')}"
        return None

"""A chaos-test factory: the fleet client driving real job processes (test-only, never the product).

Until the daemon's fleet mode lands, this stands in for ``agent-queue run``
in fleet mode, with the same contract: claim, heartbeat while the job's
command and verify gate run, report(shipped), ship only after a 200, never
after a 409. Its local root mirrors the runner's: ``shipping/<id>.json`` is
written before the report (so a crash between the coordinator's 200 and the
ship side effect is finished on restart by replaying the report: the replay
answers 200 only to the factory whose report ended the lease), and
``shipped/<id>.json`` after the ship hook. One JSON line per decision goes
to ``<root>/events.jsonl`` for the final checks.

    python tests/chaos/factory.py ROOT FACTORY_ID SHARED_DIR (--api-cmd CMD | --api URL)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent_queue.errors import AQError, Fenced, NotLeased
from agent_queue.fleet.client import FleetClient, RetryPolicy
from agent_queue.fleet.heartbeat import Heartbeat
from agent_queue.fleet.transport import make_transport
from agent_queue.fsutil import append_line, ensure_dir, write_json_atomic
from agent_queue.jobs import Job, Lease

SHIP_HOOK = "import sys,time; time.sleep(0.05); open(sys.argv[1],'a').write(sys.argv[2]+'\\n')"


class Factory:
    def __init__(self, root: Path, factory_id: str, shared: Path, client: FleetClient) -> None:
        self.root, self.fid, self.shared, self.client = root, factory_id, shared, client
        for sub in ("shipping", "shipped"):
            ensure_dir(root / sub)

    def ev(self, kind: str, job_id: str, epoch: int, **more: object) -> None:
        append_line(self.root / "events.jsonl", json.dumps({"ev": kind, "jobId": job_id, "epoch": epoch,
                                                            "factoryId": self.fid, "t": time.time(), **more}))

    def recover(self) -> None:
        for path in sorted((self.root / "shipping").glob("*.json")):
            rec = json.loads(path.read_text())
            self.settle(rec["jobId"], rec["epoch"], Lease.from_dict(rec["lease"]))

    def loop(self) -> None:
        while True:
            try:
                got = self.client.claim()
            except AQError as exc:
                self.ev("claim_error", "-", 0, error=exc.code)
                time.sleep(0.05)
                continue
            if got is None:
                time.sleep(0.05)
                continue
            job, lease = got
            assert lease is not None
            self.work(job, lease)

    def work(self, job: Job, lease: Lease) -> None:
        self.ev("claim", job.id, lease.epoch)
        lost = threading.Event()
        with Heartbeat(self.client, lease, lambda reason: lost.set()) as hb:
            (self.shared / "markers" / f"{job.id}.{self.fid}.{lease.epoch}").touch()
            for argv in (job.command, job.verify):
                if argv and not lost.is_set():
                    proc = subprocess.Popen(list(argv), start_new_session=True)
                    while proc.poll() is None:
                        if lost.wait(0.02):
                            proc.kill()
                    proc.wait()
            current = hb.current_lease
        if lost.is_set():
            self.ev("lost", job.id, lease.epoch)
            return
        write_json_atomic(self.root / "shipping" / f"{job.id}.json",
                          {"jobId": job.id, "epoch": lease.epoch, "lease": current.to_dict()})
        self.settle(job.id, lease.epoch, current)

    def settle(self, job_id: str, epoch: int, lease: Lease) -> None:
        """Report shipped until the coordinator answers; ship only on its 200 (a replay gets the same answer)."""
        while True:
            try:
                self.client.report(lease, "shipped", {"by": self.fid})
                break
            except (Fenced, NotLeased) as exc:
                self.ev("fenced", job_id, epoch, code=exc.code)
                (self.root / "shipping" / f"{job_id}.json").unlink()
                return
            except AQError as exc:
                self.ev("report_error", job_id, epoch, error=exc.code)
                time.sleep(0.1)
        line = f"{self.fid} {epoch}"
        counter = self.shared / "ship" / job_id
        if not (counter.exists() and line in counter.read_text().splitlines()):  # the hook is keyed by lease
            subprocess.run([sys.executable, "-c", SHIP_HOOK, str(counter), line], check=True)
        write_json_atomic(self.root / "shipped" / f"{job_id}.json", {"jobId": job_id, "epoch": epoch})
        (self.root / "shipping" / f"{job_id}.json").unlink()
        self.ev("ship", job_id, epoch)


def main(argv: list[str]) -> None:
    root, fid, shared, how, where = Path(argv[0]), argv[1], Path(argv[2]), argv[3], argv[4]
    import os

    token = os.environ.get("AQ_FLEET_TOKEN")
    transport = make_transport(where if how == "--api-cmd" else None, where if how == "--api" else None,
                               token, timeout_s=1.0)
    retry = RetryPolicy(max_attempts=5, deadline_s=4.0, base_delay_s=0.02, max_delay_s=0.3)
    factory = Factory(ensure_dir(root), fid, shared, FleetClient(transport, fid, [], retry))
    factory.recover()
    factory.loop()


if __name__ == "__main__":
    main(sys.argv[1:])

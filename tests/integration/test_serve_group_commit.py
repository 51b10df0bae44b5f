"""Group commit under SIGKILL: a real ``serve`` killed mid-load loses no operation it answered (issue 21).

Sixteen clients enqueue, claim, release and report as fast as the server lets
them, so operations share journal syncs; once enough answers have come back
the server's process group gets SIGKILL while requests are still in flight. A
new ``serve`` on the same directory must then hold every answered enqueue and
report, and every job's epoch at least as high as any claim answered for it;
draining the queue afterwards must only hand out epochs above every epoch
answered before (a claim the crash lost would hand its epoch out twice: a
double lease). Two rounds, the second on the state the first recovered.

SIGKILL keeps the page cache, so this shows the ordering (nothing is answered
before its line is in the journal, nothing in memory runs ahead of the files);
that the line is also synced before the answer is shown against a fake sync in
``tests/unit/test_store_group_commit.py``.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.stubutil import RunningStub, running_stub

TOKEN = "group-commit-token"
CLIENTS = 16
ANSWERS_BEFORE_KILL = 240
GUARD_S = 120  # a guard against a hang, never a measured time


@dataclass
class Answered:
    """What the clients were told (only complete 2xx answers count)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    enqueued: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    claims: list[tuple[str, int, str]] = field(default_factory=list)  # (job, epoch, factory)
    count: int = 0
    unexpected: list[str] = field(default_factory=list)

    def max_epoch(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job, epoch, _ in self.claims:
            out[job] = max(out.get(job, 0), epoch)
        return out


def client(stub: RunningStub, i: int, rnd: int, facts: Answered, enough: threading.Event) -> None:
    s = requests.Session()
    s.headers.update(stub.headers())
    api, fid = stub.url + "/v1/fleet", f"r{rnd}-f{i}"

    def answered(what: str, status: int, text: str, ok: tuple[int, ...]) -> bool:
        if status not in ok:
            with facts.lock:
                facts.unexpected.append(f"{what}: {status} {text[:200]}")
            return False
        with facts.lock:
            facts.count += 1
            if facts.count >= ANSWERS_BEFORE_KILL:
                enough.set()
        return True

    n = 0
    try:
        while True:
            job = f"r{rnd}-c{i}-{n}"
            r = s.post(api + "/jobs", json={"id": job, "command": ["true"]}, timeout=GUARD_S)
            if answered("enqueue", r.status_code, r.text, (200, 201)):
                with facts.lock:
                    facts.enqueued.add(job)
            r = s.post(api + "/claim", json={"factoryId": fid}, timeout=GUARD_S)
            if r.status_code == 204 or not answered("claim", r.status_code, r.text, (200,)):
                continue
            lease = r.json()["lease"]
            held, epoch = lease["jobId"], lease["leaseEpoch"]
            with facts.lock:
                facts.claims.append((held, epoch, fid))
            fence = {"factoryId": fid, "leaseEpoch": epoch}
            if n % 2:  # back to the queue: its next claim must get a higher epoch
                r = s.post(api + f"/jobs/{held}/release", json={**fence, "reason": "again", "countAttempt": False},
                           timeout=GUARD_S)
                answered("release", r.status_code, r.text, (200,))
            else:
                r = s.post(api + f"/jobs/{held}/report", json={**fence, "outcome": "shipped", "detail": {}},
                           timeout=GUARD_S)
                if answered("report", r.status_code, r.text, (200,)):
                    with facts.lock:
                        facts.reported.add(held)
            n += 1
    except requests.RequestException:
        return  # the server was killed: this request's outcome is unknown, and it was never answered


def load_then_kill(stub: RunningStub, rnd: int, facts: Answered) -> None:
    enough = threading.Event()
    threads = [threading.Thread(target=client, args=(stub, i, rnd, facts, enough)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(GUARD_S), "the clients never got enough answers"
    finally:
        os.killpg(stub.proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        stub.proc.wait(GUARD_S)
        for t in threads:
            t.join(GUARD_S)
    assert not facts.unexpected, facts.unexpected[:5]


def check_recovered(stub: RunningStub, facts: Answered) -> None:
    s = requests.Session()
    s.headers.update(stub.headers())
    api = stub.url + "/v1/fleet"
    highest = facts.max_epoch()
    for job in sorted(facts.enqueued | set(highest)):
        r = s.get(api + f"/jobs/{job}", timeout=GUARD_S)
        assert r.status_code == 200, f"answered enqueue of {job} lost: {r.status_code}"
        meta = r.json()["meta"]
        assert meta["leaseEpoch"] >= highest.get(job, 0), f"{job}: epoch {meta['leaseEpoch']} < answered"
        if job in facts.reported:
            assert meta["state"] == "shipped", f"answered report of {job} lost: {meta['state']}"
    # Drain what is claimable now: every epoch handed out is above every one answered before the crash.
    while True:
        r = s.post(api + "/claim", json={"factoryId": "drain"}, timeout=GUARD_S)
        if r.status_code == 204:
            break
        assert r.status_code == 200, r.text
        lease = r.json()["lease"]
        job, epoch = lease["jobId"], lease["leaseEpoch"]
        assert epoch > highest.get(job, 0), f"{job}: epoch {epoch} handed out again after the crash"
        facts.claims.append((job, epoch, "drain"))
        r = s.post(api + f"/jobs/{job}/report",
                   json={"factoryId": "drain", "leaseEpoch": epoch, "outcome": "shipped", "detail": {}},
                   timeout=GUARD_S)
        assert r.status_code == 200, r.text
        facts.reported.add(job)
    assert len({(job, epoch) for job, epoch, _ in facts.claims}) == len(facts.claims), "an epoch leased twice"


def test_sigkill_mid_load_loses_no_answered_operation(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    facts = Answered()
    for rnd in range(2):
        with running_stub(state, token=TOKEN, lease_ttl_s=600) as stub:
            load_then_kill(stub, rnd, facts)
        with running_stub(state, token=TOKEN, lease_ttl_s=600) as stub:
            check_recovered(stub, facts)
    assert len(facts.reported) > CLIENTS and len(facts.claims) > CLIENTS  # the load really ran

"""The chaos run: N real ``agent-queue run --fleet`` daemons, M jobs, one coordinator, seeded faults, a verdict.

``ChaosRun(cfg, base).run()`` returns the figures and never asserts: the
test asserts on them, so a failing run still reports everything it saw. Each
job's command, verify gate and ship hook is ``jobstep.py`` (markers per
execution and phase; the hook appends "<factory> <epoch>" to a per-job
counter). Faults: SIGKILL + restart of daemons (the phase each victim was in
is recorded), SIGSTOP/SIGCONT
pauses longer than the lease TTL, coordinator restarts (HTTP), and
coordinator faults injected by a proxy (HTTP) or a seam wrapper
(``faulty_seam.py``): 5xx, timeouts, slow answers, garbage bodies, dropped
answers. Nothing here is part of the product.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from tests.procutil import alive
from tests.stubutil import STUB_ARGV, RunningStub, running_stub

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOKEN = "chaos-secret-token-5f0e8a"


@dataclass
class ChaosConfig:
    seed: int = 1
    factories: int = 3
    jobs: int = 30
    transport: str = "seam"  # seam | http
    ttl_s: float = 2.0
    rates: dict[str, float] = field(default_factory=lambda: {"5xx": 0.04, "drop": 0.04, "garbage": 0.03,
                                                              "slow": 0.04, "timeout": 0.01})
    kills: int = 6
    pauses: int = 2
    coord_restarts: int = 2
    deadline_s: float = 150.0


# ------------------------------------------------------------------ HTTP fault proxy


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, rates: dict[str, float], seed: int) -> None:
        self.upstream = ""
        self.rates = rates
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # clients reset connections on purpose here (timeouts); not worth a traceback

    def draw(self) -> str | None:
        with self.lock:
            x = self.rng.random()
            for name, p in sorted(self.rates.items()):
                if x < p:
                    self.injected[name] += 1
                    return name
                x -= p
            return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")

    def _relay(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        kind = self.server.draw()
        if kind == "5xx":
            return self._answer(503, b'{"error": {"code": "unavailable", "message": "injected"}}')
        if kind == "slow":
            time.sleep(0.2)
        if kind == "timeout":
            time.sleep(1.5)  # past the client's read timeout
            self.close_connection = True
            return None
        try:
            host, port = self.server.upstream.removeprefix("http://").rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            conn.close()
        except OSError:  # the coordinator is restarting: the client sees a dropped connection
            self.close_connection = True
            return None
        if kind == "drop":
            self.close_connection = True  # it took effect; the answer is lost
            return None
        if kind == "garbage":
            return self._answer(200, b"<html>garbage</html>")
        return self._answer(status, data)

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status != 204:
            self.wfile.write(data)


# ------------------------------------------------------------------ the run

AGENT_QUEUE = Path(sys.executable).parent / "agent-queue"
PHASES = ("tool", "verify", "ship")


class ChaosRun:
    def __init__(self, cfg: ChaosConfig, base: Path) -> None:
        self.cfg, self.base = cfg, base
        self.rng = random.Random(cfg.seed)
        self.state = base / "coord"
        self.shared = base / "shared"
        for sub in ("markers", "ship"):
            (self.shared / sub).mkdir(parents=True, exist_ok=True)
        self.fault_log = base / "seam-faults.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stub_cm: Any = None
        self.stub: RunningStub | None = None
        self.proxy: FaultProxy | None = None
        self.counts: Counter[str] = Counter()
        self.kill_phases: Counter[str] = Counter()

    def root(self, fid: str) -> Path:
        return self.base / "factories" / fid

    # -- coordinator
    def start_coordinator(self) -> None:
        if self.cfg.transport == "http":
            self.stub_cm = running_stub(self.state, token=TOKEN, lease_ttl_s=self.cfg.ttl_s)
            self.stub = self.stub_cm.__enter__()
            assert self.proxy is not None
            self.proxy.upstream = self.stub.url

    def stop_coordinator(self) -> None:
        if self.stub_cm is not None:
            self.stub_cm.__exit__(None, None, None)
            self.stub_cm = self.stub = None

    def fleet_env(self) -> dict[str, str]:
        """How a daemon reaches the coordinator: the faulty seam wrapper, or the token + the faulty proxy."""
        if self.cfg.transport == "http":
            assert self.proxy is not None
            return {"AQ_FLEET_API": self.proxy.url, "AQ_FLEET_TOKEN": TOKEN}
        seam = [*STUB_ARGV, "--state", str(self.state), "--lease-ttl", str(self.cfg.ttl_s), "call"]
        wrapper = [sys.executable, str(HERE / "faulty_seam.py"), str(self.fault_log),
                   json.dumps(self.cfg.rates), str(self.cfg.seed), "--", *seam]
        return {"AQ_FLEET_API_CMD": shlex.join(wrapper)}

    # -- factories: real `agent-queue run --fleet` daemons
    def start_factory(self, fid: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
        env.update(self.fleet_env(), PYTHONPATH=str(REPO))
        argv = [str(AGENT_QUEUE) if AGENT_QUEUE.is_file() else sys.executable, *([] if AGENT_QUEUE.is_file()
                else ["-m", "agent_queue"]), "--root", str(self.root(fid)), "--factory-id", fid,
                "run", "--fleet", "--poll", "0.1"]
        log = open(self.base / f"{fid}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[fid] = subprocess.Popen(argv, env=env, cwd=self.base, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=log, start_new_session=True)
        log.close()

    def signal(self, fid: str, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[fid].pid, sig)

    def job_spec(self, i: int) -> dict[str, Any]:
        step = [sys.executable, str(HERE / "jobstep.py"), str(self.shared)]
        return {"id": f"job-{i:04d}", "tool": "shell", "budget": {"maxAttempts": 50, "timeoutS": 60},
                "command": [*step, "tool", f"{self.rng.uniform(0.2, 0.6):.2f}"],
                "verify": [*step, "verify", "0.25"], "ship": [*step, "ship", "0.25"]}

    # -- the schedule
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.transport == "http":
            self.proxy = FaultProxy(cfg.rates, cfg.seed)
            threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.start_coordinator()
        coord = Coordinator(JsonStore(self.state), time.time, cfg.ttl_s)
        for i in range(cfg.jobs):
            coord.enqueue(self.job_spec(i))
        fids = [f"f{i}" for i in range(cfg.factories)]
        started = time.monotonic()
        try:
            for fid in fids:
                self.start_factory(fid)
            actions = (["kill"] * cfg.kills + ["pause"] * cfg.pauses
                       + (["restart"] * cfg.coord_restarts if cfg.transport == "http" else []))
            self.rng.shuffle(actions)
            for action in actions:
                time.sleep(self.rng.uniform(0.2, 1.2))
                if self.done(coord):
                    break
                self.act(action, self.rng.choice(fids))
            while not self.settled(coord, fids) and time.monotonic() - started < cfg.deadline_s:
                time.sleep(0.2)
        finally:
            for fid in fids:
                self.signal(fid, signal.SIGCONT)
                self.signal(fid, signal.SIGKILL)
                self.procs[fid].wait()
            if self.proxy is not None:
                self.proxy.shutdown()
                self.proxy.server_close()
            self.stop_coordinator()
        figures = self.verdict(fids)
        figures["wallS"] = round(time.monotonic() - started, 1)
        return figures

    def act(self, action: str, fid: str) -> None:
        self.counts[action] += 1
        if action == "kill":
            self.kill_phases[self.phase(fid)] += 1
            self.signal(fid, signal.SIGKILL)
            self.procs[fid].wait()
            self.start_factory(fid)
        elif action == "pause":
            self.signal(fid, signal.SIGSTOP)
            time.sleep(self.cfg.ttl_s * 1.5)
            self.signal(fid, signal.SIGCONT)
        elif action == "restart":
            self.stop_coordinator()
            time.sleep(0.3)
            self.start_coordinator()

    def live_steps(self) -> list[tuple[str, str]]:
        """(phase, factory) of each job step still running (its marker has no "done" and its pid lives)."""
        out = []
        for marker in (self.shared / "markers").iterdir():
            _job, phase, fid, pid = marker.name.rsplit(".", 3)
            with contextlib.suppress(OSError, ValueError):
                if "done" not in marker.read_text() and alive(int(pid)):
                    out.append((phase, fid))
        return out

    def phase(self, fid: str) -> str:
        """What the daemon ``fid`` is doing right now: tool / verify / ship, held (a job but no step: claim,
        workspace or report in flight) or idle."""
        phases = {phase for phase, who in self.live_steps() if who == fid}
        for phase in PHASES:
            if phase in phases:
                return phase
        running = self.root(fid) / "running"
        return "held" if running.is_dir() and any(running.iterdir()) else "idle"

    def done(self, coord: Coordinator) -> bool:
        with contextlib.suppress(Exception):
            return all(j["meta"]["state"] in ("shipped", "quarantined") for j in coord.list_jobs())
        return False

    def settled(self, coord: Coordinator, fids: list[str]) -> bool:
        """All jobs ended at the coordinator, no daemon holds a job or owes a ship hook, no hook still runs."""
        held = any(any(self.root(f).glob(sub)) for f in fids for sub in ("running/*", ".state/ship-hooks/*"))
        return self.done(coord) and not held and not any(p == "ship" for p, _ in self.live_steps())

    # -- the verdict
    def verdict(self, fids: list[str]) -> dict[str, Any]:
        coord = Coordinator(JsonStore(self.state), time.time, 3600)
        jobs = {j["job"]["id"]: j for j in coord.list_jobs()}
        counters = {i: [tuple_of(ln) for ln in (self.shared / "ship" / i).read_text().splitlines()]
                    if (self.shared / "ship" / i).exists() else [] for i in jobs}
        cevents = [json.loads(line) for line in (self.state / "events.jsonl").read_text().splitlines()]
        refused: dict[tuple[str, Any, Any], float] = {}  # (job, factory, epoch) -> its first 409
        for e in cevents:
            if e.get("status") == 409 and e.get("jobId"):
                refused.setdefault((e["jobId"], e.get("factoryId"), e.get("leaseEpoch")), e["ts"])
        accepted = {e["jobId"]: (e["factoryId"], e["leaseEpoch"]) for e in cevents
                    if e.get("op") == "report" and e.get("status") == 200 and e.get("outcome") == "shipped"}
        accepted_at = {e["jobId"]: e["ts"] for e in cevents
                       if e.get("op") == "report" and e.get("status") == 200 and e.get("outcome") == "shipped"}
        # A 409 to the holder after its report was accepted (a renew the network delayed past the report)
        # takes nothing back: only a 409 before the licence to ship, or to another lease, counts.
        ship_after_409 = sum(1 for i, lines in counters.items() for fid, epoch in lines
                             if (i, fid, epoch) in refused and not (accepted.get(i) == (fid, epoch)
                                                                  and accepted_at[i] <= refused[(i, fid, epoch)]))
        local: dict[str, list[tuple[str, int]]] = {}
        for f in fids:
            for p in sorted((self.root(f) / "shipped").glob("*/result.json")):
                local.setdefault(p.parent.name, []).append((f, json.loads(p.read_text())["leaseEpoch"]))
        agree = all(local.get(i, []) == counters[i] == ([accepted[i]] if i in accepted else []) for i in jobs)
        faults: Counter[str] = Counter(self.proxy.injected if self.proxy else Counter())
        if self.fault_log.exists():
            faults.update(self.fault_log.read_text().split())
        markers = [m.name.rsplit(".", 3)[1] for m in (self.shared / "markers").iterdir()]
        return {
            "transport": self.cfg.transport, "seed": self.cfg.seed, "factories": len(fids), "jobs": len(jobs),
            "shipped": sum(1 for j in jobs.values() if j["meta"]["state"] == "shipped"),
            "executions": markers.count("tool"), "shipHooks": markers.count("ship"),
            "faults": dict(sorted(faults.items())),
            "kills": self.counts["kill"], "killPhases": dict(sorted(self.kill_phases.items())),
            "pauses": self.counts["pause"], "coordRestarts": self.counts["restart"],
            "conflicts409": sum(1 for e in cevents if e.get("status") == 409),
            "bad409": bad_409s(cevents), "fencedLocal": sum(len(list((self.root(f) / "fenced").glob("*")))
                                                           for f in fids if (self.root(f) / "fenced").is_dir()),
            "reclaims": sum(1 for e in cevents if e.get("op") == "reclaim"),
            "doubleShips": sum(1 for lines in counters.values() if len(lines) > 1),
            "lost": sum(1 for i, j in jobs.items()
                        if j["meta"]["state"] != "shipped" or not counters[i] or len(local.get(i, [])) != 1),
            "shipAfter409": ship_after_409, "localAgrees": agree,
        }


def tuple_of(line: str) -> tuple[str, int]:
    fid, epoch = line.split()
    return fid, int(epoch)


def bad_409s(events: list[dict[str, Any]]) -> int:
    """409s aimed at the live holder (same factory and epoch while its lease was current): must be 0."""
    holder: dict[str, tuple[str, int]] = {}
    bad = 0
    for e in events:
        job = e.get("jobId")
        if e.get("op") == "claim" and e.get("status") == 200 and not e.get("dryRun") and job:
            holder[job] = (e["factoryId"], e["leaseEpoch"])
        elif e.get("status") == 409 and job:
            if holder.get(job) == (e.get("factoryId"), e.get("leaseEpoch")):
                bad += 1
        elif e.get("op") in ("report", "release", "reclaim") and e.get("status") == 200 and job:
            holder.pop(job, None)
    return bad


def summary_line(f: dict[str, Any]) -> str:
    faults = " ".join(f"{k}={v}" for k, v in f["faults"].items())
    kills = " ".join(f"{k}={v}" for k, v in f["killPhases"].items())
    return (f"chaos[{f['transport']} seed={f['seed']}]: jobs={f['jobs']} factories={f['factories']} "
            f"executions={f['executions']} faults: {faults} kills={f['kills']} ({kills}) pauses={f['pauses']} "
            f"coord-restarts={f['coordRestarts']} 409s={f['conflicts409']} reclaims={f['reclaims']} "
            f"double-ships={f['doubleShips']} lost={f['lost']} ship-after-409={f['shipAfter409']} "
            f"wall={f.get('wallS')}s")

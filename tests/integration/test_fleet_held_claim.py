"""The HTTP daemon and held claims: it holds its claims when healthz offers them, and polls otherwise.

A daemon polling every 300 s can only start a job enqueued after its first
claim because that claim was held and woken; its stop while a claim is held
ends within its grace (the hold is at most half of it).
"""

from __future__ import annotations

import signal
from pathlib import Path

import requests
from cli_support import aq, wait_for
from fleet_support import daemons, fleet_env

from agent_queue.fleet.client import FleetClient
from agent_queue.fleet.transport import make_transport
from tests.stubutil import running_stub, seam_command

TOKEN = "held-claim-token"


def held(url: str) -> int:
    text = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    return int(float(next(ln for ln in text.splitlines() if ln.startswith("aq_held_claims ")).split()[1]))


def client_for(api: str | None = None, api_cmd: str | None = None) -> FleetClient:
    return FleetClient(make_transport(api_cmd, api, TOKEN if api else None, 30.0), "f1", [])


def test_the_client_holds_only_where_the_coordinator_offers_it(tmp_path: Path) -> None:
    with running_stub(tmp_path / "a", token=TOKEN) as offering:
        assert client_for(api=offering.url).claim_wait_s() == 60
    with running_stub(tmp_path / "b", token=TOKEN, extra_args=["--max-claim-wait", "0"]) as refusing:
        assert client_for(api=refusing.url).claim_wait_s() == 0
    assert client_for(api_cmd=seam_command(tmp_path / "c")).claim_wait_s() == 0  # the seam cannot hold


def test_a_daemon_starts_a_job_on_the_wake_and_stops_within_its_grace(tmp_path: Path) -> None:
    done = tmp_path / "done"
    with running_stub(tmp_path / "coord", token=TOKEN, extra_args=["--claim-recheck", "600"]) as stub, \
            daemons() as ds:
        env = fleet_env(api=stub.url, token=TOKEN)
        proc = ds.start(tmp_path / "root", env, "--poll", "300", "--grace", "4")
        wait_for(lambda: held(stub.url) == 1, "the daemon's claim is held")
        job = {"id": "h1", "command": ["touch", str(done)]}
        requests.post(stub.url + "/v1/fleet/jobs", json=job, headers=stub.headers(), timeout=30).raise_for_status()
        wait_for(done.exists, "the job ran on the wake-up (the daemon polls every 300 s)", deadline_s=30)
        wait_for(lambda: held(stub.url) == 1, "the daemon holds its next claim", deadline_s=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)  # held for half the grace (2 s), where an unbounded hold would take 20 s
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert aq(tmp_path / "root", "status", env=env).returncode == 0


def test_a_draining_daemon_never_holds_its_claim(tmp_path: Path) -> None:
    """``--drain`` ends at the first empty claim: holding it would only delay the exit by the hold (5 s)."""
    done = tmp_path / "done"
    with running_stub(tmp_path / "coord", token=TOKEN, extra_args=["--claim-recheck", "600"]) as stub, \
            daemons() as ds:
        job = {"id": "d1", "command": ["touch", str(done)]}
        requests.post(stub.url + "/v1/fleet/jobs", json=job, headers=stub.headers(), timeout=30).raise_for_status()
        proc = ds.start(tmp_path / "root", fleet_env(api=stub.url, token=TOKEN), "--drain", "--grace", "60")
        seen_held = 0
        while proc.poll() is None:  # a held claim would show for its whole 5 s: sampled far more often
            seen_held = max(seen_held, held(stub.url))
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert done.exists() and seen_held == 0

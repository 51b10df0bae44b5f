"""The two-factory demo, run headless: stub mode, live mode (HTTP), broken coordinators, Ctrl-C.

Each run starts real `agent-queue run` daemons and a real coordinator. The
broken coordinators (tests/fakes/broken_*.py) prove the demo can FAIL: a demo
that cannot fail proves nothing. Temp dirs go under tmp_path (TMPDIR).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.stubutil import running_stub

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "two-factory-demo"
FAKES = REPO / "tests" / "fakes"
RUN_TIMEOUT_S = 90.0
# Smaller than the defaults, for the runs that only need to show one failure or the HTTP path.
FAST = {"AQ_DEMO_JOBS": "2", "AQ_DEMO_JOB_SECONDS": "1", "AQ_DEMO_LEASE_TTL_S": "2"}


def demo_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    env["TMPDIR"] = str(tmp_path)
    env.update(extra or {})
    return env


def run_demo(tmp_path: Path, extra: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run the demo to the end; on a hang, SIGTERM it (it cleans up), then kill its group."""
    proc = subprocess.Popen([sys.executable, str(DEMO)], env=demo_env(tmp_path, extra), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        finally:
            _kill_group(proc.pid)
        pytest.fail(f"demo did not finish in {RUN_TIMEOUT_S}s:\n{out}")
    return proc.returncode, out


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def leftovers(tmp_path: Path) -> list[str]:
    """Processes whose command line points into a demo temp dir under tmp_path."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], stdout=subprocess.PIPE, text=True, check=True).stdout
    marker = str(tmp_path / "aq-two-factory-")
    return [line for line in out.splitlines() if marker in line]


def verdict(out: str, key: str) -> str:
    found = re.findall(rf"^(PASS|FAIL) \({re.escape(key)}\) ", out, flags=re.M)
    assert len(found) == 1, f"no single verdict line for ({key}):\n{out}"
    return str(found[0])


def assert_clean(tmp_path: Path, out: str) -> None:
    assert leftovers(tmp_path) == [], out
    assert list(tmp_path.glob("aq-two-factory-*")) == [], "temp dir not removed"


def test_stub_mode_default_knobs_every_guarantee_holds(tmp_path: Path) -> None:
    code, out = run_demo(tmp_path)
    assert code == 0, out
    for key in ("a", "b", "b'", "c"):
        assert verdict(out, key) == "PASS", out
    assert "mode stub (command seam)" in out
    assert "-> 409" in out  # the late stale-epoch report was answered 409
    assert "Timeline" in out and "ALL GUARANTEES HOLD" in out
    assert_clean(tmp_path, out)


def test_live_mode_over_http_with_a_token(tmp_path: Path) -> None:
    token = "demo-test-token-5f1e"
    with running_stub(tmp_path / "coord", token=token, lease_ttl_s=2) as stub:
        code, out = run_demo(tmp_path, {**FAST, "AQ_FLEET_API": stub.url, "AQ_FLEET_TOKEN": token})
    assert code == 0, out
    for key in ("a", "b", "b'", "c"):
        assert verdict(out, key) == "PASS", out
    assert f"mode live {stub.url}" in out
    assert "/v1/fleet/status samples" in out  # evidence from the API, not the stub's files
    assert token not in out
    assert_clean(tmp_path, out)


# The same broken coordinators behind the command seam (stub mode) and behind `serve` with enrolled factories.
MODES = pytest.mark.parametrize("mode", [{}, {"AQ_DEMO_ENROLL": "1"}], ids=["stub", "enrolled"])


@MODES
def test_a_coordinator_without_fencing_fails_b(tmp_path: Path, mode: dict[str, str]) -> None:
    broken = f"{sys.executable} {FAKES / 'broken_nofence.py'}"
    code, out = run_demo(tmp_path, {**FAST, "AQ_DEMO_STUB_CMD": broken, **mode})
    assert code == 1, out
    assert verdict(out, "b") == "FAIL", out
    assert re.search(r"FAIL: dead worker's late report with stale epoch \d+ -> 200 accepted", out), out
    assert "SOME GUARANTEE FAILED" in out
    assert_clean(tmp_path, out)


@MODES
def test_a_coordinator_that_double_assigns_fails_a(tmp_path: Path, mode: dict[str, str]) -> None:
    broken = f"{sys.executable} {FAKES / 'broken_double.py'}"
    code, out = run_demo(tmp_path, {**FAST, "AQ_DEMO_STUB_CMD": broken, "AQ_DEMO_KEEP": "1", **mode})
    assert code == 1, out
    assert verdict(out, "a") == "FAIL", out
    assert re.search(r"FAIL: demo-\w+-a\d: [2-9] execution\(s\) by ", out), out  # in the markers (2, more under load)
    assert leftovers(tmp_path) == [], out
    kept = re.search(r"^kept \(AQ_DEMO_KEEP=1\): (\S+)", out, flags=re.M)
    assert kept, out
    base = Path(kept.group(1))
    assert (base / "coordinator" / "events.jsonl").is_file() and (base / "mac-1" / "daemon.log").is_file()
    assert len(list((base / "markers").iterdir())) >= 2


def test_enrolled_mode_a_token_per_factory_every_guarantee_holds(tmp_path: Path) -> None:
    """AQ_DEMO_ENROLL=1: one serve without a shared token; each daemon reads its own factory token from a 0600
    file; the dead worker's late report, sent under its own factory's token, meets fencing (409), not a 403."""
    code, out = run_demo(tmp_path, {**FAST, "AQ_DEMO_ENROLL": "1", "AQ_DEMO_KEEP": "1"})
    assert code == 0, out
    for key in ("a", "b", "b'", "c"):
        assert verdict(out, key) == "PASS", out
    assert "mode enrolled (serve, a token per factory, no shared token)" in out
    assert re.search(r"late report\(shipped\) for \S+ as (mac|ubuntu)-1 epoch \d+ -> 409 not_leased", out), out
    kept = re.search(r"^kept \(AQ_DEMO_KEEP=1\): (\S+)", out, flags=re.M)
    assert kept and leftovers(tmp_path) == [], out
    base = Path(kept.group(1))
    tokens = {p.name: p.read_text().strip() for p in (base / "tokens").iterdir()}
    assert sorted(tokens) == ["mac-1", "ubuntu-1"] and tokens["mac-1"] != tokens["ubuntu-1"]
    assert all(t.startswith("aqf_") for t in tokens.values())
    assert all((base / "tokens" / name).stat().st_mode & 0o077 == 0 for name in tokens)
    events = (base / "coordinator" / "events.jsonl").read_text()
    ops = [json.loads(line)["op"] for line in events.splitlines()]
    assert ops.count("factory_add") == 2 and "refused" not in ops  # nobody was refused
    for name, token in tokens.items():
        assert token not in out and token not in events
        assert token not in (base / name / "daemon.log").read_text()


def test_a_bad_knob_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    code, out = run_demo(tmp_path, {"AQ_DEMO_JOBS": "abc"})
    assert code == 2 and "AQ_DEMO_JOBS='abc': not a number" in out
    assert list(tmp_path.glob("aq-two-factory-*")) == []
    code, out = run_demo(tmp_path, {"AQ_DEMO_ENROLL": "1", "AQ_DEMO_STATE": "postgresql://x@127.0.0.1/y"})
    assert code == 2 and "AQ_DEMO_ENROLL=1" in out and "AQ_DEMO_STATE" in out


def test_ctrl_c_stops_every_process_and_removes_the_temp_dir(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(DEMO)], env=demo_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "enqueued" in line and "-a1" in line:
                break
        assert leftovers(tmp_path), "the daemons should be running now"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + out
    assert_clean(tmp_path, out)


@pytest.mark.postgres
def test_postgres_mode_each_factory_on_its_own_replica_every_guarantee_holds(tmp_path: Path, pg_url: str) -> None:
    code, out = run_demo(tmp_path, {**FAST, "AQ_DEMO_STATE": pg_url})
    assert code == 0, out
    for key in ("a", "b", "b'", "c"):
        assert verdict(out, key) == "PASS", out
    assert "mode postgresql, 2 serve replicas on one database" in out
    assert re.search(r"late report\(shipped\) for \S+ as \S+ epoch \d+ -> 409", out), out
    assert_clean(tmp_path, out)


@pytest.mark.postgres
@pytest.mark.parametrize(("fake", "fails"), [("broken_nofence.py", "b"), ("broken_double.py", "a")])
def test_postgres_mode_still_fails_the_broken_coordinators(tmp_path: Path, pg_url: str, fake: str, fails: str) -> None:
    broken = f"{sys.executable} {FAKES / fake}"
    code, out = run_demo(tmp_path, {**FAST, "AQ_DEMO_STATE": pg_url, "AQ_DEMO_STUB_CMD": broken})
    assert code == 1, out
    assert verdict(out, fails) == "FAIL", out
    assert "SOME GUARANTEE FAILED" in out
    assert_clean(tmp_path, out)

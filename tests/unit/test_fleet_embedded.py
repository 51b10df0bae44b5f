"""The embedded seam: AQ_FLEET_API_CMD naming this installation's coordinator-stub runs in-process.

Which commands are embedded (and which keep spawning), that an embedded
request answers exactly what a spawned ``coordinator-stub call`` answers on
the same state dir, that both exclude each other through the same lock, that
a lock held by another real process ends in ``TransportError`` after the
timeout instead of a hang, and that a bug in the stub code is a transport
error the client retries, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import coordinator_stub.api
from agent_queue.errors import TransportError
from agent_queue.fleet.client import FleetClient, RetryPolicy
from agent_queue.fleet.command_transport import CommandTransport
from agent_queue.fleet.embedded import EmbeddedTransport
from agent_queue.fleet.transport import make_transport
from agent_queue.fleet.wire import Response
from tests.stubutil import STUB_ARGV, seam_call, stub_env

TESTS = Path(__file__).resolve().parents[1]
VENV_STUB = Path(sys.executable).parent / "coordinator-stub"
SECRET = "tok-embedded-SECRET-1234"

needs_venv_stub = pytest.mark.skipif(not VENV_STUB.is_file(), reason="no coordinator-stub script next to python")


def cmd(*argv: str | Path) -> str:
    return shlex.join(str(a) for a in argv)


def command_transport(state: Path, *extra: str) -> CommandTransport:
    """The spawning seam to the same stub, as the daemon ran it before."""
    return CommandTransport([*STUB_ARGV, "--state", str(state), *extra, "call"], 30.0, env=stub_env())


def embedded(state: Path, timeout_s: float = 30.0, *extra: str) -> EmbeddedTransport:
    transport = make_transport(cmd(*STUB_ARGV, "--state", state, *extra, "call"), None, None, timeout_s)
    assert isinstance(transport, EmbeddedTransport)
    return transport


def enqueue(state: Path, job_id: str, **extra: Any) -> None:
    out = seam_call(state, "POST", "/v1/fleet/jobs", json.dumps({"id": job_id, "command": ["true"], **extra}))
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == 201, out


# -- which transport --------------------------------------------------------------------


@needs_venv_stub
@pytest.mark.parametrize("flags", [["--state", "{d}"], ["--state={d}", "--lease-ttl", "7"],
                                   ["--ignore-dry-run", "--state", "{d}", "--lease-ttl=7"], ["--state", "{d}"]])
@pytest.mark.parametrize("tail", [["call"], ["call", "--ignore-dry-run"]])
def test_this_venvs_stub_script_is_embedded(tmp_path: Path, flags: list[str], tail: list[str]) -> None:
    args = [f.format(d=tmp_path / "coord") for f in flags]
    transport = make_transport(cmd(VENV_STUB, *args, *tail), None, None, 5.0)
    assert isinstance(transport, EmbeddedTransport)
    assert transport.settings is not None and transport.settings.state_dir == str(tmp_path / "coord")


@needs_venv_stub
def test_bare_name_is_embedded_when_path_finds_this_venvs_script(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{VENV_STUB.parent}{os.pathsep}/usr/bin:/bin")
    for program in ("coordinator-stub", Path(sys.executable).name):
        argv = [program] if program == "coordinator-stub" else [program, "-m", "coordinator_stub"]
        transport = make_transport(cmd(*argv, "--state", tmp_path, "call"), None, None, 5.0)
        assert isinstance(transport, EmbeddedTransport), program
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # now the name is another installation's (or none)
    if shutil.which(Path(sys.executable).name):
        transport = make_transport(cmd(Path(sys.executable).name, "-m", "coordinator_stub", "--state", tmp_path,
                                       "call"), None, None, 5.0)
        assert type(transport) is CommandTransport


def test_this_python_dash_m_is_embedded(tmp_path: Path) -> None:
    transport = make_transport(cmd(sys.executable, "-m", "coordinator_stub", "--state", tmp_path, "call"),
                               None, None, 5.0)
    assert isinstance(transport, EmbeddedTransport)
    assert repr(transport) == f"EmbeddedTransport(state_dir={str(tmp_path)!r}, timeout_s=5.0)"


@needs_venv_stub
def test_everything_else_keeps_spawning(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    wrapper = tmp_path / "bin" / "coordinator-stub"  # same name, another file: a wrapper around the real one
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(VENV_STUB))} "$@"\n')
    wrapper.chmod(0o755)
    other_python = tmp_path / "other-venv" / "bin" / "python"  # the same interpreter file, another venv
    other_python.parent.mkdir(parents=True)
    other_python.symlink_to(os.path.realpath(sys.executable))
    spawned = [
        cmd(wrapper, "--state", state, "call"),
        cmd(VENV_STUB, "--state", state, "--bogus", "call"),
        cmd(VENV_STUB, "--state", state, "call", "POST", "/v1/fleet/claim"),
        cmd(VENV_STUB, "--state", state, "serve"),
        cmd(VENV_STUB, "--state", state),
        cmd(sys.executable, "-I", "-m", "coordinator_stub", "--state", state, "call"),
        cmd(sys.executable, "-m", "coordinator_stub.cli", "--state", state, "call"),
        cmd(other_python, "-m", "coordinator_stub", "--state", state, "call"),
        cmd(sys.executable, TESTS / "fakes" / "recording_seam.py", tmp_path / "log", "--",
            *STUB_ARGV, "--state", state, "call"),
        cmd(sys.executable, TESTS / "chaos" / "faulty_seam.py", tmp_path / "faults", "{}", "1", "--",
            *STUB_ARGV, "--state", state, "call"),
        cmd(sys.executable, TESTS / "fakes" / "fake_seam.py", "--state", state, "call"),
        cmd(shutil.which("cat") or "/bin/cat"),
    ]
    for command in spawned:
        assert type(make_transport(command, None, None, 5.0)) is CommandTransport, command


def test_embedded_announces_itself_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent_queue.fleet.embedded")
    state = tmp_path / "announced"
    embedded(state)
    embedded(state, 5.0)
    lines = [r.getMessage() for r in caplog.records if "in-process (embedded)" in r.getMessage()]
    assert len(lines) == 1
    assert "AQ_FLEET_API_CMD names this installation's coordinator-stub: requests run in-process (embedded)" \
        in lines[0] and str(state) in lines[0]


# -- same answers, same lock ------------------------------------------------------------


def test_embedded_and_spawned_answer_the_same_on_one_dir(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    emb, spawn = embedded(state), command_transport(state)
    enqueue(state, "j1")
    enqueue(state, "j2")
    claim = {"factoryId": "f1", "capabilities": [], "dryRun": False, "requestId": "req-1"}

    # A claim and its replay (same requestId): the same lease back, whichever transport carries it.
    first = emb.request("POST", "/v1/fleet/claim", claim)
    assert first.status == 200 and first.body is not None and first.body["job"]["id"] == "j1"
    assert spawn.request("POST", "/v1/fleet/claim", claim) == first
    lease = first.body["lease"]
    report = {"factoryId": "f1", "leaseEpoch": lease["leaseEpoch"], "outcome": "shipped", "detail": {"n": 1}}
    path = "/v1/fleet/jobs/j1/report"
    shipped = spawn.request("POST", path, report)
    assert shipped.status == 200 and shipped.body is not None and shipped.body["meta"]["state"] == "shipped"
    assert emb.request("POST", path, report) == shipped  # the exact replay of a report
    for method, url, body in [
        ("GET", "/v1/fleet/jobs/j1", None),
        ("GET", "/v1/fleet/jobs?state=shipped", None),
        ("POST", path, {**report, "leaseEpoch": 9}),  # 409
        ("GET", "/v1/fleet/jobs/nope", None),  # 404
        ("DELETE", "/v1/fleet/claim", None),  # 405
        ("POST", "/v1/fleet/claim", {"factoryId": "bad id!"}),  # 400
    ]:
        a, b = emb.request(method, url, body), spawn.request(method, url, body)
        assert a == b, (method, url)
    assert [emb.request("GET", "/v1/fleet/jobs/nope").status, spawn.request("POST", path, {"x": 1}).status] \
        == [404, 400]

    # Interleaved the other way round: the spawned seam claims, the embedded one reports.
    other = {**claim, "requestId": "req-2"}
    second = spawn.request("POST", "/v1/fleet/claim", other)
    assert second.status == 200 and second.body is not None and second.body["job"]["id"] == "j2"
    assert emb.request("POST", "/v1/fleet/claim", other) == second
    quarantine = {"factoryId": "f1", "leaseEpoch": second.body["lease"]["leaseEpoch"], "outcome": "quarantined",
                  "detail": {}}
    done = emb.request("POST", "/v1/fleet/jobs/j2/report", quarantine)
    assert done.status == 200 and done.body is not None and done.body["meta"]["state"] == "quarantined"
    assert spawn.request("POST", "/v1/fleet/jobs/j2/report", quarantine) == done
    assert emb.request("POST", "/v1/fleet/claim", claim | {"requestId": "req-3"}) == Response(204, None)
    assert spawn.request("POST", "/v1/fleet/claim", claim | {"requestId": "req-4"}) == Response(204, None)
    # Both wrote to the one event log, each replay recognised as such whoever made the first call.
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    seen = [(e["op"], e.get("jobId"), e["status"], e.get("replay", False)) for e in events
            if e["op"] in ("claim", "report")]
    assert seen == [("claim", "j1", 200, False), ("claim", "j1", 200, True), ("report", "j1", 200, False),
                    ("report", "j1", 200, True), ("report", "j1", 409, False), ("report", "j1", 409, False),
                    ("claim", "j2", 200, False), ("claim", "j2", 200, True), ("report", "j2", 200, False),
                    ("report", "j2", 200, True), ("claim", None, 204, False), ("claim", None, 204, False)]


def test_answers_never_share_objects(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    transport = embedded(state)
    spec: dict[str, Any] = {"id": "j1", "command": ["true"], "env": {"A": "1"}}
    assert transport.request("POST", "/v1/fleet/jobs", spec).status == 201
    spec["command"].append("mutated")
    first = transport.request("GET", "/v1/fleet/jobs/j1")
    assert first.body is not None and first.body["job"]["command"] == ["true"]
    first.body["job"]["command"].append("mutated too")
    again = transport.request("GET", "/v1/fleet/jobs/j1")
    assert again.body is not None and again.body["job"]["command"] == ["true"]


def test_settings_come_from_the_flags_else_the_env_like_the_spawned_stub(tmp_path: Path) -> None:
    state = tmp_path / "from-env"
    env = {"AQ_STUB_STATE": str(state), "AQ_STUB_LEASE_TTL_S": "7", "AQ_FLEET_TOKEN": SECRET}
    transport = EmbeddedTransport(["call"], 5.0, env=env)
    assert transport.settings is not None and transport.settings.token is None  # the token is never read
    assert SECRET not in repr(transport) and SECRET not in repr(transport.settings)
    enqueue(state, "j1")
    answer = transport.request("POST", "/v1/fleet/claim", {"factoryId": "f1", "capabilities": []})
    assert answer.body is not None and answer.body["lease"]["ttlS"] == 7.0
    flagged = EmbeddedTransport(["--lease-ttl", "9", "call"], 5.0, env=env)
    assert flagged.settings is not None and flagged.settings.lease_ttl_s == 9.0


def test_a_setting_the_spawned_stub_refuses_is_a_transport_error_per_request(tmp_path: Path) -> None:
    transport = EmbeddedTransport(["call"], 5.0, env={})
    with pytest.raises(TransportError, match="pass --state DIR or set AQ_STUB_STATE"):
        transport.request("GET", "/v1/fleet/healthz")
    bad = EmbeddedTransport(["--state", str(tmp_path), "--lease-ttl", "-1", "call"], 5.0, env={})
    with pytest.raises(TransportError, match="--lease-ttl: must be a positive number"):
        bad.request("GET", "/v1/fleet/healthz")


# -- locks and timeouts -----------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
{take}
print("locked", flush=True)
time.sleep(120)
"""
FLOCK = "fcntl.flock(fd, fcntl.LOCK_EX)"
FILELOCK = "from filelock import FileLock\nlock = FileLock(sys.argv[1]); lock.acquire()"  # what `serve` takes


@pytest.fixture()
def lock_holder(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def hold(state: Path, take: str = FLOCK) -> subprocess.Popen[str]:
        state.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(take=take), str(state / ".lock")],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("take", [FLOCK, FILELOCK], ids=["flock", "filelock"])
def test_a_lock_held_by_another_process_times_out_instead_of_hanging(tmp_path: Path, lock_holder: Any,
                                                                       take: str) -> None:
    state = tmp_path / "coord"
    holder = lock_holder(state, take)
    transport = embedded(state, 1.0)
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"\.lock still locked by another process after 1s"):
        transport.request("GET", "/v1/fleet/status")
    assert 1.0 <= time.monotonic() - start < 5.0
    # The per-call override (what FleetClient passes as the time left) caps it further.
    slow = embedded(state, 30.0)
    start = time.monotonic()
    with pytest.raises(TransportError, match="after 0.3s"):
        slow.request("GET", "/v1/fleet/status", timeout_s=0.3)
    assert time.monotonic() - start < 3.0
    holder.kill()
    holder.wait()
    assert slow.request("GET", "/v1/fleet/status").status == 200


def test_a_waiting_request_gets_the_lock_once_it_is_released(tmp_path: Path, lock_holder: Any) -> None:
    state = tmp_path / "coord"
    holder = lock_holder(state)
    threading.Timer(0.5, holder.kill).start()
    start = time.monotonic()
    assert embedded(state, 10.0).request("GET", "/v1/fleet/status").status == 200
    assert 0.4 <= time.monotonic() - start < 5.0


def test_threads_and_spawned_calls_exclude_each_other(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    jobs = [f"j{i:02d}" for i in range(16)]
    for job_id in jobs:
        enqueue(state, job_id)
    transport = embedded(state)
    got: list[str] = []
    errors: list[BaseException] = []

    def drain(claim: Any, factory: str) -> None:
        try:
            while True:
                answer = claim("POST", "/v1/fleet/claim", {"factoryId": factory, "capabilities": []})
                if answer.status == 204:
                    return
                assert answer.status == 200, answer
                got.append(answer.body["job"]["id"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(transport.request, f"emb{i}")) for i in range(4)]
    threads.append(threading.Thread(target=drain, args=(command_transport(state).request, "spawned")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == jobs  # each job leased exactly once


# -- failures inside the stub -----------------------------------------------------------


def test_an_exception_in_the_stub_is_a_transport_error_the_client_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = coordinator_stub.api.handle
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1:3])
        if len(calls) == 1:
            raise RuntimeError("boom\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(coordinator_stub.api, "handle", flaky)
    caplog.set_level(logging.DEBUG, logger="agent_queue.fleet.embedded")
    transport = embedded(tmp_path / "coord")
    with pytest.raises(TransportError) as raised:
        transport.request("GET", "/v1/fleet/status")
    assert str(raised.value).endswith("in-process): coordinator-stub failed: RuntimeError: boom second line")
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)  # traceback at debug

    calls.clear()
    client = FleetClient(transport, "f1", [], RetryPolicy(sleep=lambda s: None))
    assert client.status()["counts"]["queued"] == 0  # first attempt failed, the retry answered
    assert len(calls) == 2


def test_state_dir_that_cannot_be_opened_is_an_answer_like_the_seams(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    emb = embedded(blocker / "coord")
    spawn = command_transport(blocker / "coord")
    answer = emb.request("GET", "/v1/fleet/status")
    assert answer.status == 500 and answer.body is not None and answer.body["error"]["code"] == "state_error"
    assert spawn.request("GET", "/v1/fleet/status") == answer

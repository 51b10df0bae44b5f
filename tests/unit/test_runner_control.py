"""Claim hooks and shutdown: lost claim, refused ship, warm and cold shutdown, log fields."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from core_support import make_settings, result, shell_job

from agent_queue import log as aqlog
from agent_queue.control import Control
from agent_queue.errors import Fenced
from agent_queue.inbox import LocalQueue, State
from agent_queue.local_source import LocalClaim, LocalSource
from agent_queue.runner import Runner, RunOptions
from agent_queue.source import Claim, Record


class ScriptedClaim(LocalClaim):
    """A local claim whose keepalive reports "lost" once the tool is running, or whose ship is refused."""

    lose_when_started = False
    refuse_ship = False

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.started = threading.Event()
        self.ship_asked = False

    @contextlib.contextmanager
    def keepalive(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        def watch() -> None:
            if self.started.wait(10):
                on_lost("lease epoch 1 superseded")

        if self.lose_when_started:
            threading.Thread(target=watch, daemon=True).start()
        yield

    def note_pid(self, pid: int, cgroup: str | None = None) -> None:
        super().note_pid(pid, cgroup)
        self.started.set()

    def approve_ship(self, record: Record) -> None:
        self.ship_asked = True
        if self.refuse_ship:
            raise Fenced("report(shipped): lease epoch 1 is not current")


class ScriptedSource(LocalSource):
    def __init__(self, queue: LocalQueue, **behaviour: bool) -> None:
        super().__init__(queue)
        self.behaviour = behaviour
        self.claims: list[ScriptedClaim] = []

    def next_claim(self) -> Claim | None:
        claim = super().next_claim()
        if claim is None:
            return None
        scripted = ScriptedClaim(self.queue, self.queue.get(claim.job.id))
        for k, v in self.behaviour.items():
            setattr(scripted, k, v)
        self.claims.append(scripted)
        return scripted


def setup(tmp_path: Path, *cmd: str, **spec: object) -> tuple[Runner, LocalQueue, ScriptedSource, Control]:
    return setup_with(tmp_path, {}, *cmd, **spec)


def setup_with(tmp_path: Path, behaviour: dict[str, bool], *cmd: str,
               **spec: object) -> tuple[Runner, LocalQueue, ScriptedSource, Control]:
    s = make_settings(tmp_path / "r", grace_s=0.3)
    q = LocalQueue(s.root).init()
    q.enqueue(shell_job("j", *cmd, **spec))
    source = ScriptedSource(q, **behaviour)
    control = Control(s.grace_s)
    return Runner(s, source, control), q, source, control


def test_lost_claim_kills_tool_skips_verify_and_never_ships(tmp_path: Path) -> None:
    runner, q, source, _ = setup_with(tmp_path, {"lose_when_started": True}, "sleep", "60",
                                      verify=["sh", "-c", "echo verify-ran > v.txt"], ship=["touch", "shipped.txt"])
    runner.work(RunOptions(once=True))
    res = result(q.root, "quarantine", "j")
    assert res["history"][-1]["outcome"] == "fenced"
    assert "lease epoch 1 superseded" in res["reason"]
    assert not source.claims[0].ship_asked
    assert not (q.root / "work" / "j" / "v.txt").exists()
    assert not (q.root / "work" / "j" / "shipped.txt").exists()


def test_refused_ship_never_runs_the_ship_hook(tmp_path: Path) -> None:
    runner, q, source, _ = setup_with(tmp_path, {"refuse_ship": True}, "true", ship=["touch", "shipped.txt"])
    runner.work(RunOptions(once=True))
    assert source.claims[0].ship_asked
    assert q.find("j") is State.QUARANTINE
    assert "ship refused" in result(q.root, "quarantine", "j")["reason"]
    assert not (q.root / "work" / "j" / "shipped.txt").exists()


def test_warm_shutdown_waits_grace_then_gives_back_uncounted(tmp_path: Path) -> None:
    runner, q, source, control = setup(tmp_path, "sleep", "60")
    stopper = _stop_when_started(source, control, times=1)
    assert runner.work(RunOptions()) == 0  # given back: no job ended here
    assert runner.attempts_run == 1
    stopper.join()
    entry = q.get("j")
    assert entry.state is State.INBOX and entry.attempts == 0
    assert "grace of 0.3s expired" in entry.result["reason"]


def test_warm_shutdown_lets_a_quick_job_finish(tmp_path: Path) -> None:
    runner, q, source, control = setup(tmp_path, "sh", "-c", "sleep 0.1")
    control.grace_s = 30
    stopper = _stop_when_started(source, control, times=1)
    runner.work(RunOptions())
    stopper.join()
    assert q.find("j") is State.SHIPPED


def test_second_signal_kills_at_once(tmp_path: Path) -> None:
    runner, q, source, control = setup(tmp_path, "sleep", "60")
    control.grace_s = 3600  # only the second request can end this
    stopper = _stop_when_started(source, control, times=2)
    runner.work(RunOptions())
    stopper.join()
    entry = q.get("j")
    assert entry.state is State.INBOX and entry.attempts == 0
    assert "second signal" in entry.result["reason"]


def _stop_when_started(source: ScriptedSource, control: Control, times: int) -> threading.Thread:
    def go() -> None:
        deadline = threading.Event()
        for _ in range(400):  # poll for the tool to start, up to ~20 s
            if source.claims and source.claims[0].started.wait(0.05):
                break
            deadline.wait(0.05)
        for _ in range(times):
            control.request_stop()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_stop_before_start_takes_no_job(tmp_path: Path) -> None:
    runner, q, _, control = setup(tmp_path, "true")
    control.request_stop()
    assert runner.work(RunOptions()) == 0
    assert q.find("j") is State.INBOX


def test_json_log_lines_carry_job_factory_attempt(tmp_path: Path) -> None:
    buf = io.StringIO()
    aqlog.setup("json", False, "fac-9", stream=buf)
    try:
        runner, _, _, _ = setup(tmp_path, "true")
        runner.work(RunOptions(once=True))
    finally:
        logging.getLogger("agent_queue").handlers.clear()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    shipped = [rec for rec in lines if rec["msg"] == "shipped"]
    assert shipped and shipped[0]["jobId"] == "j" and shipped[0]["factoryId"] == "fac-9"
    assert shipped[0]["attempt"] == 1
    assert "tok-secret-123" not in buf.getvalue()


def test_text_log_has_the_same_fields(tmp_path: Path) -> None:
    buf = io.StringIO()
    aqlog.setup("text", True, "fac-9", stream=buf)
    try:
        runner, _, _, _ = setup(tmp_path, "true")
        runner.work(RunOptions(once=True))
    finally:
        logging.getLogger("agent_queue").handlers.clear()
    line = next(x for x in buf.getvalue().splitlines() if " shipped " in x)
    assert "job=j" in line and "factory=fac-9" in line and "attempt=1" in line

"""A daemon killed after the move to shipped/ but before its ship hook ran: start-up runs the hook.

Regression (found by the chaos suite with real daemons, HTTP long run): the
job was in shipped/ and accepted by the coordinator, but its hook never ran
and nothing ever ran it, so the ship side effect was lost.
"""

from __future__ import annotations

from pathlib import Path

from core_support import drain, make_settings, result, shell_job

from agent_queue import shiphooks
from agent_queue.inbox import LocalQueue, State


def test_an_interrupted_ship_hook_runs_at_start_up_and_only_then(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "hook"
    queue = LocalQueue(root).init()
    queue.enqueue(shell_job("j1", "true", ship=["sh", "-c", f'echo ran >> "{out}"']))
    queue.move("j1", State.INBOX, State.SHIPPED, {})  # what a daemon killed just after the move leaves
    shiphooks.mark(root, "j1")
    drain(make_settings(root))
    assert out.read_text() == "ran\n"
    assert result(root, "shipped", "j1")["shipHook"]["exitCode"] == 0
    assert shiphooks.interrupted(root) == []
    drain(make_settings(root))  # a clean restart runs nothing again
    assert out.read_text() == "ran\n"


def test_a_normal_ship_leaves_no_marker(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "hook"
    LocalQueue(root).init().enqueue(shell_job("j2", "true", ship=["sh", "-c", f'echo ran >> "{out}"']))
    drain(make_settings(root))
    assert out.read_text() == "ran\n" and shiphooks.interrupted(root) == []


def test_a_marker_for_a_job_not_yet_moved_waits_for_its_ship(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "hook"
    queue = LocalQueue(root).init()
    queue.enqueue(shell_job("j3", "true", ship=["sh", "-c", f'echo ran >> "{out}"']))
    queue.take("j3")  # killed after the marker, before the move: the job is still in running/
    shiphooks.mark(root, "j3")
    drain(make_settings(root))  # recovery puts it back; its (only) ship runs the hook once
    assert out.read_text() == "ran\n" and shiphooks.interrupted(root) == []

"""Hostile job specs and state files: refused or quarantined with a reason, nothing written outside <root>.

Three doors are tried with the same generator (random JSON, huge strings, deep
nesting, wrong types, control characters, path-like ids): ``service.enqueue``
(what ``agent-queue enqueue`` calls), the coordinator's ``enqueue``, and loose
files dropped into ``<root>/inbox/`` and picked up by a real daemon process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_queue import service
from agent_queue.errors import AQError, StateError
from agent_queue.inbox import LocalQueue, State
from agent_queue.settings import Settings
from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from tests.integration.cli_support import aq, clean_env

HOSTILE_IDS = ["../escape", "..", ".", "/etc/passwd", "a/b", "a\\b", "a\x00b", "\x1b[31mred", "x" * 129, "",
               " lead", "-dash", "ok/../../x", "C:\\x", "~root", "%2e%2e", "a\nb", "é"]
HUGE = "z" * 200_000

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from([HUGE, "\x00\x07\x1b", "../../x", "/tmp/x"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=10)
FIELDS = ["id", "kind", "tool", "profile", "prompt", "command", "repo", "verify", "requires", "priority", "budget",
          "parentId", "dependsOn", "children", "notBefore"]
specs = st.one_of(
    values,
    st.fixed_dictionaries({"id": st.sampled_from(HOSTILE_IDS)}, optional={f: values for f in FIELDS[1:]}),
    st.fixed_dictionaries({"id": st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), "tool": st.just("shell"),
                           "command": st.one_of(values, st.lists(st.text(max_size=10), min_size=1, max_size=3))},
                          optional={f: values for f in FIELDS[3:] if f != "command"}),
)


def _outside(tmp: Path, root: Path) -> list[str]:
    """Everything under ``tmp`` that is not ``root`` or inside it."""
    return sorted(str(p) for p in tmp.rglob("*") if p != root and root not in p.parents)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_enqueue_refuses_or_accepts_cleanly(tmp_path: Path, spec: Any) -> None:
    root = tmp_path / "root"
    s = Settings(root=root, factory_id="hostile")
    try:
        job_id = service.enqueue(s, spec, "spec.json")
    except StateError:
        raise
    except AQError as exc:
        assert exc.message and "\n" not in exc.message, "an error is one line"
        assert len(exc.message) < 2000, "an error message must not echo a huge input"
    else:
        assert LocalQueue(root).find(job_id) is State.INBOX
    assert _outside(tmp_path, root) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_coordinator_refuses_or_accepts_cleanly(tmp_path: Path, spec: Any) -> None:
    state = tmp_path / "coord"
    coord = Coordinator(JsonStore(state), lambda: 1e9, 60)
    try:
        _, view = coord.enqueue(spec)
    except StateError:
        raise
    except AQError as exc:
        assert 400 <= exc.http_status < 500 and exc.message
        assert len(exc.message) < 2000
    else:
        assert coord.get_job(view["job"]["id"])["job"]["id"] == view["job"]["id"]
    coord.status()  # the state still loads
    assert _outside(tmp_path, state) == []


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_path_like_ids_are_refused_everywhere(tmp_path: Path, job_id: str) -> None:
    root = tmp_path / "root"
    spec = {"id": job_id, "tool": "shell", "command": ["true"]}
    with pytest.raises(AQError):
        service.enqueue(Settings(root=root, factory_id="h"), spec, "spec.json")
    with pytest.raises(AQError):
        Coordinator(JsonStore(tmp_path / "coord"), lambda: 1e9, 60).enqueue(spec)
    with pytest.raises(AQError):
        LocalQueue(root).get(job_id)
    assert _outside(tmp_path, root) == []  # the coordinator's state dir was not even created


def test_hostile_inbox_files_are_quarantined_and_the_daemon_stays_up(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inbox = root / "inbox"
    assert aq(root, "run", "--drain").returncode == 0  # creates the layout (a read like status never does)
    hostile: dict[str, bytes] = {
        "garbage.json": os.urandom(256),
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "deepobj.json": b'{"id":"deepobj","tool":"shell","command":["true"],"x":' + b'{"a":' * 5000 + b"1"
                        + b"}" * 5000 + b"}",
        "escape.json": json.dumps({"id": "../../escape", "tool": "shell", "command": ["touch", "x"]}).encode(),
        "list.json": b"[1, 2, 3]",
        "types.json": json.dumps({"id": "types", "tool": 7, "command": "rm -rf /", "priority": "high"}).encode(),
        "huge.json": json.dumps({"id": "huge", "tool": "shell", "command": ["true"], "prompt": HUGE}).encode()[:-1],
        "ctrl.json": json.dumps({"id": "ctrl\x1b", "tool": "shell", "command": ["true"]}).encode(),
        "nul.json": b'{"id": "nul", "tool": "shell", "command": ["tr\x00ue"]}',
        "unknowntool.json": json.dumps({"id": "unknowntool", "tool": "nope", "command": ["true"]}).encode(),
    }
    for name, data in hostile.items():
        (inbox / name).write_bytes(data)
    (inbox / "good.json").write_text(json.dumps({"id": "good", "tool": "shell", "command": ["true"]}))
    env = clean_env(AQ_FLEET_TOKEN="hostile-secret-token")
    out = aq(root, "run", "--drain", "--poll", "0.05", env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    queue = LocalQueue(root)
    assert queue.find("good") is State.SHIPPED
    quarantined = {p.name: json.loads((p / "result.json").read_text()) for p in queue.dir(State.QUARANTINE).iterdir()}
    sources = {r.get("sourceFile") or name for name, r in quarantined.items()}
    for name in hostile:
        stem = name.removesuffix(".json")
        assert name in sources or stem in quarantined, f"{name} was neither refused nor quarantined"
    assert all(r.get("reason") for r in quarantined.values()), quarantined
    assert not list(inbox.glob("*.json")), "a hostile file was left in the inbox"
    assert _outside(tmp_path, root) == []
    assert aq(root, "status").returncode == 0  # the root still loads

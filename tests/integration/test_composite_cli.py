"""`agent-queue enqueue` / `status` / `requeue` with composite jobs, as real processes."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import aq, status


def test_cycle_exits_2_naming_it_and_a_good_composite_shows_in_status(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bad = {"id": "epic", "kind": "composite", "children": [
        {"id": "a", "command": ["true"], "dependsOn": ["b"]}, {"id": "b", "command": ["true"], "dependsOn": ["a"]}]}
    out = aq(root, "enqueue", "-", stdin=json.dumps(bad))
    assert out.returncode == 2 and "dependency cycle a -> b -> a" in out.stderr
    good = {"id": "epic", "kind": "composite", "children": [
        {"id": "a", "command": ["true"]}, {"id": "b", "command": ["false"], "dependsOn": ["a"],
                                           "budget": {"maxAttempts": 1}}]}
    assert aq(root, "enqueue", "-", stdin=json.dumps(good)).stdout.strip() == "epic"
    assert aq(root, "run", "--drain").returncode == 0
    (roll,) = status(root)["composites"]
    assert roll["state"] == "quarantined" and roll["counts"]["quarantined"] == 1
    text = aq(root, "status").stdout
    assert "composite: epic quarantined (shipped 1, quarantined 1): child b quarantined" in text
    assert aq(root, "requeue", "epic").returncode == 0
    assert status(root)["composites"][0]["state"] == "queued"

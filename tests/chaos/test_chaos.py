"""The chaos suite: real ``agent-queue run --fleet`` daemons under kills, pauses, restarts and coordinator faults.

The short fixed-seed run (3 factories, 30 jobs) is part of ``make test``;
``make chaos`` passes ``--chaos-long`` (5 factories, 200 jobs). Each run
prints one summary line and writes its figures as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos.harness import TOKEN, ChaosConfig, ChaosRun, summary_line

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("transport", ["seam", "http"])
def test_guarantees_hold_under_faults(transport: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    long = bool(request.config.getoption("--chaos-long", default=False))
    cfg = ChaosConfig(seed=7, transport=transport)
    if long:
        cfg = ChaosConfig(seed=7, transport=transport, factories=5, jobs=200, kills=25, pauses=6,
                          coord_restarts=5, deadline_s=900)
    figures = ChaosRun(cfg, tmp_path).run()
    print("\n" + summary_line(figures))
    out = request.config.getoption("--chaos-figures", default=None)
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    if out:
        path = Path(out)
        old = json.loads(path.read_text()) if path.exists() else {}
        old[f"{transport}{'-long' if long else ''}"] = figures
        path.write_text(json.dumps(old, indent=2, sort_keys=True))
    assert figures["doubleShips"] == 0, figures
    assert figures["lost"] == 0, figures
    assert figures["shipAfter409"] == 0, figures
    assert figures["bad409"] == 0, figures
    assert figures["localAgrees"], figures
    assert figures["shipped"] == cfg.jobs
    assert figures["kills"] > 0 and sum(figures["faults"].values()) > 0
    # The token never reached any file the run wrote (logs, events, markers, state).
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"token leaked into {path}"

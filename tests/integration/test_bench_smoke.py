"""The benchmarks never rot: ``run_all.py --smoke`` runs every script at tiny sizes into tmp_path.

No timing assertion: only that each figure's JSON is produced, well-formed,
marked as a smoke run, and that the report renders a row for each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["b1_seam", "b2_http", "b3_history", "b4_e2e", "b5_idle", "b6_failover", "b7_fairness", "b8_pg_http",
         "b9_claim_depth", "b10_pickup"]


def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in NAMES:
        doc = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert doc["name"] == name
        assert doc["smoke"] is True
        assert doc["machine"]["cores"] >= 1
        assert isinstance(doc["headline"], dict) and "target" in doc["headline"]
    b1 = json.loads((tmp_path / "b1_seam.json").read_text(encoding="utf-8"))
    assert b1["seam_imports_click_or_requests"] is False
    assert b1["help_imports_requests"] is False
    table = [line for line in res.stdout.splitlines() if line.startswith("| B")]
    assert len(table) == len(NAMES), res.stdout
    assert not any("| missing |" in line for line in table)

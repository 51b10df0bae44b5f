"""Run every benchmark script (B1..B9) in order, then print the report table.

``--smoke`` runs tiny sizes (part of ``make test``: proves the scripts run and
write well-formed JSON, measures nothing). ``--out DIR`` picks the results
directory (default benchmarks/results). Each script is its own process, so
one figure's imports and memory never colour the next.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["b1_seam.py", "b2_http.py", "b3_history.py", "b4_e2e.py", "b5_idle.py", "b6_failover.py",
           "b7_fairness.py", "b8_pg_http.py", "b9_claim_depth.py"]


def main(argv: list[str]) -> int:
    failed = []
    for script in SCRIPTS:
        res = subprocess.run([sys.executable, str(HERE / script), *argv], check=False)
        if res.returncode != 0:
            failed.append(script)
    out = argv[argv.index("--out") + 1] if "--out" in argv else str(HERE / "results")
    subprocess.run([sys.executable, str(HERE / "report.py"), "--out", out], check=False)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One phase of a chaos job, run by a real daemon as the job's command, verify gate or ship hook (test-only).

    python jobstep.py SHARED PHASE SECONDS        (PHASE: tool | verify | ship)

The daemon runs it in ``<root>/work/<job>``, so the factory and the job are
read from the working directory. It leaves ``SHARED/markers/<job>.<phase>.<factory>.<pid>``
("start" at once, "done" at the end) so the harness can count executions and
tell which phase a killed daemon was in, sleeps SECONDS (to widen the window
kills land in), and as the ship hook appends "<factory> <epoch>" to
``SHARED/ship/<job>``: a job shipped twice shows as two lines. The epoch is
read from the job's shipped/ record, which the daemon writes before the hook.
The hook is idempotent per lease (a replayed hook of the same lease adds no
line), as ship hooks must be; two leases shipping the same job still show.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    shared, phase, seconds = Path(argv[0]), argv[1], float(argv[2])
    cwd = Path.cwd().resolve()
    job, root = cwd.name, cwd.parents[1]
    factory = root.name
    marker = shared / "markers" / f"{job}.{phase}.{factory}.{os.getpid()}"
    with open(marker, "a") as f:
        f.write("start\n")
    time.sleep(seconds)
    if phase == "ship":
        epoch = json.loads((root / "shipped" / job / "result.json").read_text())["leaseEpoch"]
        line = f"{factory} {epoch}"
        counter = shared / "ship" / job
        if not (counter.exists() and line in counter.read_text().splitlines()):
            with open(counter, "a") as f:
                f.write(line + "\n")
    with open(marker, "a") as f:
        f.write("done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

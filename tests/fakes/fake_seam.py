#!/usr/bin/env python3
"""A fake ``AQ_FLEET_API_CMD``: answers ``METHOD PATH`` from a scripted queue and records each call.

Environment: ``FAKE_SCRIPT`` (the step list, see scripted.py) and
``FAKE_LOG`` (jsonl: argv, stdin, the full environment, this process's pid).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scripted import pop_step, record


def main() -> int:
    stdin = sys.stdin.read()
    record(
        Path(os.environ["FAKE_LOG"]),
        {"argv": sys.argv[1:], "stdin": stdin, "env": dict(os.environ), "pid": os.getpid()},
    )
    step = pop_step(Path(os.environ["FAKE_SCRIPT"]))
    if "sleep" in step:
        if step.get("grandchild"):
            child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({step['sleep']})"])
            record(Path(os.environ["FAKE_LOG"]), {"grandchild": child.pid})
        time.sleep(step["sleep"])
        return 0
    if "exit" in step:
        sys.stderr.write(step.get("stderr", "fake seam failure") + "\n")
        return int(step["exit"])
    if "raw" in step:
        sys.stdout.write(step["raw"])
        return 0
    sys.stdout.write(json.dumps({"status": step["status"], "body": step.get("body")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

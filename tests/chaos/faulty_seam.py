"""A fault-injecting wrapper around the coordinator's command seam (test-only).

    python faulty_seam.py FAULT_LOG RATES_JSON SEED -- REAL_SEAM_ARGV... METHOD PATH

Per call it draws one fault from RATES_JSON (kind -> probability) or none:
``5xx`` answers 503 without calling the coordinator; ``drop`` runs the real
call and then exits 1 (the answer is lost in transit after it took effect);
``garbage`` runs it and prints junk instead of its answer; ``slow`` sleeps a
little first; ``timeout`` holds the call, then exits 1 without reaching the
coordinator (no answer; the daemon's own 30 s transport timeout is too long
for a test run, so the hang is cut short the way a dropped connection ends it).
Each injected fault appends its kind to FAULT_LOG.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    fault_log, rates, seed = argv[0], json.loads(argv[1]), argv[2]
    real = argv[4:]
    rng = random.Random(f"{seed}-{os.getpid()}-{time.time_ns()}")
    draw, kind = rng.random(), None
    for name, p in sorted(rates.items()):
        if draw < p:
            kind = name
            break
        draw -= p
    if kind is not None:
        fd = os.open(fault_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{kind}\n".encode())
        os.close(fd)
    if kind == "5xx":
        sys.stdin.buffer.read()
        print(json.dumps({"status": 503, "body": {"error": {"code": "unavailable", "message": "injected"}}}))
        return 0
    if kind == "slow":
        time.sleep(0.2)
    if kind == "timeout":
        sys.stdin.buffer.read()
        time.sleep(1.5)
        return 1
    out = subprocess.run(real, stdin=sys.stdin.buffer, capture_output=True)
    if kind == "drop":
        return 1
    sys.stdout.write("<html>garbage</html>\n" if kind == "garbage" else out.stdout.decode())
    return out.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

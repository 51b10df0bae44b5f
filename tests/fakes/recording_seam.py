"""A command seam that records every request, then forwards it to the real one.

``python recording_seam.py LOG -- REAL-SEAM-ARGV... METHOD PATH``: appends
``{"method", "path", "body"}`` as one JSON line to LOG, runs the real seam
command with the same stdin and passes its stdout and exit status through.
Tests read LOG to prove which calls a daemon made (or that it made none).
With ``AQ_TEST_LOSE_REPORTS=N`` in its environment, the answers of the first N
report calls are lost AFTER the coordinator applied them (garbage, exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    log_path, sep, rest = argv[0], argv[1], argv[2:]
    assert sep == "--", "usage: recording_seam.py LOG -- SEAM-ARGV... METHOD PATH"
    body = sys.stdin.buffer.read()
    method, path = rest[-2], rest[-1]
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"method": method, "path": path,
                             "body": json.loads(body) if body.strip() else None}) + "\n")
    done = subprocess.run(rest, input=body, capture_output=True, check=False)
    if path.endswith("/report") and _lose_this_answer(log_path):
        sys.stdout.write("<html>502 proxy error</html>")  # applied by the coordinator, answer lost
        return 1
    sys.stdout.buffer.write(done.stdout)
    sys.stderr.buffer.write(done.stderr)
    return done.returncode


def _lose_this_answer(log_path: str) -> bool:
    budget = int(os.environ.get("AQ_TEST_LOSE_REPORTS", "0"))
    counter = f"{log_path}.lost"
    lost = os.path.getsize(counter) if os.path.exists(counter) else 0
    if lost >= budget:
        return False
    with open(counter, "a") as fh:
        fh.write("x")
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

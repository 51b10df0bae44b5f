"""A command seam that records every request, then forwards it to the real one.

``python recording_seam.py LOG -- REAL-SEAM-ARGV... METHOD PATH``: appends
``{"method", "path", "body"}`` as one JSON line to LOG, runs the real seam
command with the same stdin and passes its stdout and exit status through.
Tests read LOG to prove which calls a daemon made (or that it made none).
"""

from __future__ import annotations

import json
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
    sys.stdout.buffer.write(done.stdout)
    sys.stderr.buffer.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""A stand-in planning agent: answers each run with the next scripted reply, in Claude Code's JSON form.

Usage: ``fake_planner.py DIR``. ``DIR/replies.json`` is a list of replies, one
per run (the last one repeats); a reply is an object:

  text     what the agent answers (a plan in a ```json block, or anything)
  write    a file name: write it in the working directory (a worktree: allowed)
  touch    an absolute path: write it (the real repo: the planner must refuse the plan)
  exit     exit status (default 0)

Each run's prompt is kept as ``DIR/prompt-<n>.txt`` and its working directory
as ``DIR/cwd-<n>.txt``, so tests can see the problems fed back and where it ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    folder = Path(sys.argv[1])
    count = folder / "count"
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    (folder / f"prompt-{n}.txt").write_text(sys.stdin.read())
    (folder / f"cwd-{n}.txt").write_text(os.getcwd())
    replies = json.loads((folder / "replies.json").read_text())
    reply = replies[min(n, len(replies)) - 1]
    if reply.get("write"):
        Path(reply["write"]).write_text("a planner's scratch file\n")
    if reply.get("touch"):
        Path(reply["touch"]).write_text("the planner wrote into the repo\n")
    print(json.dumps({"type": "system", "subtype": "init", "session_id": f"plan-{n}"}))
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": reply.get("text", ""),
                      "num_turns": 1, "total_cost_usd": 0.01, "session_id": f"plan-{n}"}))
    return int(reply.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())

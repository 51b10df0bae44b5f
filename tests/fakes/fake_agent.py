#!/usr/bin/env python3
"""A stand-in for the agent CLIs, run through the real adapters' argv.

Usage: ``fake_agent.py FLAVOR <the real tool's arguments...>`` where FLAVOR is
claude | codex | gemini | aider. It checks the flags the real CLI needs,
reads the prompt the way the real CLI does (stdin, ``-`` or
``--message-file``), edits a file in its cwd, and prints the real tool's
output format. Markers in the prompt (or in ``FAKE_AGENT_MODE``) steer it:

  [[fail]]        exit 1 with an error
  [[hang]]        sleep for an hour (the runner's timeout must kill it)
  [[cost=2.5]]    report that cost (claude/aider)
  [[ratelimit]]   print the tool's usage-limit message, exit 1
  [[auth]]        print the tool's expired-login message, exit 1
  [[write:NAME]]  edit NAME instead of AGENT_CHANGE.txt
  [[nowrite]]     change nothing

Every output also reports the prompt's length and sha256, and whether any
AQ_* variable was visible, so tests can assert what reached the tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

RESET_EPOCH = 4102444800  # 2100-01-01, a "reset time" the tests can recognise


def usage(msg: str) -> None:
    print(f"fake_agent: usage error: {msg}", file=sys.stderr)
    sys.exit(2)


def opt(args: list[str], name: str) -> str | None:
    if name in args:
        i = args.index(name)
        if i + 1 >= len(args):
            usage(f"{name} needs a value")
        return args[i + 1]
    return None


def read_prompt(flavor: str, args: list[str]) -> str:
    if flavor == "claude":
        if "-p" not in args and "--print" not in args:
            usage("claude needs -p")
        if opt(args, "--output-format") not in ("json", "stream-json"):
            usage("expected --output-format json")
        return sys.stdin.read()
    if flavor == "codex":
        if args[:1] != ["exec"] or "--json" not in args:
            usage("codex needs: exec --json")
        if args[-1] != "-":
            usage("expected the prompt on stdin ('-')")
        return sys.stdin.read()
    if flavor == "gemini":
        if opt(args, "--output-format") != "json":
            usage("expected --output-format json")
        extra = opt(args, "-p") or opt(args, "--prompt")
        if extra is None:
            usage("gemini headless needs -p")
        return sys.stdin.read() + "\n\n" + str(extra)
    if flavor == "aider":
        path = opt(args, "--message-file")
        if path is None or not ("--yes-always" in args or "--yes" in args):
            usage("aider needs --message-file and --yes-always")
        return Path(str(path)).read_text(encoding="utf-8")
    usage(f"unknown flavor {flavor}")
    return ""


def limit_message(flavor: str) -> str:
    return {
        "claude": f"Claude AI usage limit reached|{RESET_EPOCH}",
        "codex": "ERROR: You've hit your usage limit. Try again in 2 hours 5 minutes.",
        "gemini": "[API Error: 429 RESOURCE_EXHAUSTED] Quota exceeded. Please retry in 31.5s.",
        "aider": "litellm.RateLimitError: 429 Too Many Requests",
    }[flavor]


def auth_message(flavor: str) -> str:
    return {
        "claude": "Invalid API key · Please run /login",
        "codex": "unexpected status 401 Unauthorized: please log in again",
        "gemini": "API key not valid. Please pass a valid API key.",
        "aider": "litellm.AuthenticationError: invalid api key",
    }[flavor]


def emit(flavor: str, text: str, cost: float, info: dict[str, object], error: str | None) -> None:
    if flavor == "claude":
        print(json.dumps({
            "type": "result", "subtype": "error_during_execution" if error else "success",
            "is_error": bool(error), "result": error or text, "session_id": "sess-claude-1", "num_turns": 3,
            "total_cost_usd": cost, "duration_ms": 12,
            "usage": {"input_tokens": 100, "cache_read_input_tokens": 20, "output_tokens": 50}, **info,
        }))
    elif flavor == "codex":
        print(json.dumps({"type": "thread.started", "thread_id": "thread-codex-1"}))
        print(json.dumps({"type": "turn.started"}))
        if error:
            print(json.dumps({"type": "error", "message": error}))
            print(json.dumps({"type": "turn.failed", "error": {"message": error}}))
        else:
            print(json.dumps({"type": "item.completed", "item": {"type": "agent_message", "text": text}, **info}))
            print(json.dumps({"type": "turn.completed",
                              "usage": {"input_tokens": 200, "cached_input_tokens": 10, "output_tokens": 70}}))
    elif flavor == "gemini":
        out: dict[str, object] = {
            "session_id": "sess-gemini-1", "response": text,
            "stats": {"models": {"gemini-2.5-pro": {"api": {"totalRequests": 2},
                                                    "tokens": {"prompt": 300, "candidates": 40}}}},
            **info,
        }
        if error:
            out["error"] = {"type": "ApiError", "message": error, "code": 1}
        print(json.dumps(out))
    else:
        print(error or text)
        print(f"Tokens: 1.5k sent, 250 received. Cost: ${cost / 2:.2f} message, ${cost:.2f} session.")
        print(json.dumps(info))


def main() -> None:
    flavor, args = sys.argv[1], sys.argv[2:]
    prompt = read_prompt(flavor, args)
    markers = prompt + " " + os.environ.get("FAKE_AGENT_MODE", "")
    info = {
        "fake_prompt_len": len(prompt.encode("utf-8")),
        "fake_prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "fake_saw_aq_env": sorted(k for k in os.environ if k.startswith("AQ_")),
    }
    m = re.search(r"\[\[cost=([\d.]+)\]\]", markers)
    cost = float(m.group(1)) if m else 0.05
    if "[[hang]]" in markers:
        time.sleep(3600)
    if "[[ratelimit]]" in markers:
        emit(flavor, "", cost, info, limit_message(flavor))
        sys.exit(1)
    if "[[auth]]" in markers:
        emit(flavor, "", cost, info, auth_message(flavor))
        sys.exit(1)
    if "[[fail]]" in markers:
        emit(flavor, "", cost, info, "the task failed")
        sys.exit(1)
    if "[[nowrite]]" not in markers:
        w = re.search(r"\[\[write:([\w./-]+)\]\]", markers)
        target = Path(w.group(1) if w else "AGENT_CHANGE.txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as fh:
            fh.write(f"edited by fake {flavor}\n")
    emit(flavor, f"done: {flavor} changed the files", cost, info, None)


if __name__ == "__main__":
    main()

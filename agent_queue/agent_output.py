"""Reading what an agent CLI printed: its structured-output totals and the reset time of a usage limit.

One parser per ``output_format`` of an adapter (``PARSERS``): claude-json,
codex-jsonl, gemini-json, aider-text, or none. Each returns what the tool
reported about itself (costUsd, tokensIn, tokensOut, turns, sessionId, and
isError when the tool flagged its own failure) and never raises on garbage:
a transcript is third-party output. ``reset_time_from_text`` reads when a
usage limit ends, in the forms the agent CLIs print it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in ``text``: the whole text if it is one, else one per line."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            whole = json.loads(stripped)
        except ValueError:
            pass
        else:
            return [whole] if isinstance(whole, dict) else []
    out = []
    for line in stripped.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


def _obj(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    return value if isinstance(value, dict) else {}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def parse_none(text: str) -> dict[str, Any]:
    return {}


def parse_claude_json(text: str) -> dict[str, Any]:
    """``claude -p --output-format json|stream-json``: the ``type: result`` object carries the totals."""
    objs = _json_objects(text)
    results = [o for o in objs if o.get("type") == "result"] or objs[-1:]
    if not results:
        return {}
    res = results[-1]
    usage = _obj(res, "usage")
    tokens_in = sum(
        (_int(usage.get(k)) or 0 for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")),
        0,
    )
    cost = _num(res.get("total_cost_usd"))
    if cost is None:
        cost = _num(res.get("cost_usd"))  # older releases
    return _clean(
        {
            "costUsd": cost,
            "tokensIn": tokens_in if usage else None,
            "tokensOut": _int(usage.get("output_tokens")),
            "turns": _int(res.get("num_turns")),
            "sessionId": res.get("session_id") if isinstance(res.get("session_id"), str) else None,
            "isError": True if res.get("is_error") is True else None,
        }
    )


def parse_codex_jsonl(text: str) -> dict[str, Any]:
    """``codex exec --json``: ``thread.started`` names the session, each ``turn.completed`` adds usage."""
    session = None
    tokens_in = tokens_out = turns = 0
    seen_usage = failed = False
    for obj in _json_objects(text):
        kind = obj.get("type")
        if kind == "thread.started" and isinstance(obj.get("thread_id"), str):
            session = obj["thread_id"]
        elif kind in ("turn.completed", "turn.failed"):
            turns += 1
            failed = failed or kind == "turn.failed"
            usage = obj.get("usage")
            if isinstance(usage, dict):
                seen_usage = True
                tokens_in += _int(usage.get("input_tokens")) or 0
                tokens_out += _int(usage.get("output_tokens")) or 0
        elif kind == "error":
            failed = True
    return _clean(
        {
            "tokensIn": tokens_in if seen_usage else None,
            "tokensOut": tokens_out if seen_usage else None,
            "turns": turns or None,
            "sessionId": session,
            "isError": True if failed else None,
        }
    )


def parse_gemini_json(text: str) -> dict[str, Any]:
    """``gemini --output-format json``: ``stats.models.<model>.tokens`` summed over models."""
    objs = _json_objects(text)
    if not objs:
        return {}
    res = objs[-1]
    stats = _obj(res, "stats")
    models = _obj(stats, "models")
    tin = tout = turns = 0
    seen = False
    for m in models.values():
        if not isinstance(m, dict):
            continue
        toks, api = _obj(m, "tokens"), _obj(m, "api")
        seen = seen or bool(toks)
        tin += _int(toks.get("prompt")) or 0
        tout += _int(toks.get("candidates")) or 0
        turns += _int(api.get("totalRequests")) or 0
    if not seen and ("inputTokens" in stats or "outputTokens" in stats):
        seen, tin, tout = True, _int(stats.get("inputTokens")) or 0, _int(stats.get("outputTokens")) or 0
    session = res.get("session_id") or res.get("sessionId")
    return _clean(
        {
            "tokensIn": tin if seen else None,
            "tokensOut": tout if seen else None,
            "turns": turns or None,
            "sessionId": session if isinstance(session, str) else None,
            "isError": True if res.get("error") else None,
        }
    )


_AIDER_TOKENS = re.compile(r"Tokens:\s*([\d.]+)(k|m)?\s*sent.*?([\d.]+)(k|m)?\s*received", re.IGNORECASE)
_AIDER_COST = re.compile(r"Cost:\s*\$([\d.]+)\s*message,\s*\$([\d.]+)\s*session", re.IGNORECASE)


def _aider_count(num: str, suffix: str | None) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get((suffix or "").lower(), 1)
    return int(float(num) * scale)


def parse_aider_text(text: str) -> dict[str, Any]:
    """aider prints ``Tokens: 2.1k sent, 150 received. Cost: $0.01 message, $0.02 session.`` per reply."""
    tin = tout = turns = 0
    for m in _AIDER_TOKENS.finditer(text):
        turns += 1
        tin += _aider_count(m.group(1), m.group(2))
        tout += _aider_count(m.group(3), m.group(4))
    costs = _AIDER_COST.findall(text)
    return _clean(
        {
            "costUsd": float(costs[-1][1]) if costs else None,
            "tokensIn": tin if turns else None,
            "tokensOut": tout if turns else None,
            "turns": turns or None,
        }
    )


PARSERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "none": parse_none,
    "claude-json": parse_claude_json,
    "codex-jsonl": parse_codex_jsonl,
    "gemini-json": parse_gemini_json,
    "aider-text": parse_aider_text,
}
OUTPUT_FORMATS = tuple(PARSERS)


# --------------------------------------------------------------------------- the agent's answer


def answer_text(output_format: str, text: str) -> str:
    """The agent's final answer as plain text, unwrapped from its structured output when it has one.

    A planner reads a JSON plan out of the answer; with ``--output-format json``
    the answer is a string inside the tool's own JSON (claude's ``result``,
    gemini's ``response``, codex's last ``agent_message``). Unknown or plain
    formats give the text back unchanged.
    """
    objs = _json_objects(text) if output_format in ("claude-json", "gemini-json", "codex-jsonl") else []
    answers: list[Any] = []
    for obj in objs:
        item = _obj(obj, "item")
        if output_format == "claude-json" and obj.get("type") == "result":
            answers.append(obj.get("result"))
        elif output_format == "gemini-json" and "response" in obj:
            answers.append(obj["response"])
        elif output_format == "codex-jsonl" and item.get("type") == "agent_message":
            answers.append(item.get("text"))
    return answers[-1] if answers and isinstance(answers[-1], str) and answers[-1] else text


# --------------------------------------------------------------------------- reset times

_EPOCH_AFTER_BAR = re.compile(r"limit reached\|(\d{9,11})")
_RETRY_IN = re.compile(r"(?:try again|retry|resets?)\s+(?:in|after)\s+(.{1,60})", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\b", re.I)
_RESETS_AT = re.compile(
    r"resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b(?:\s*\(([A-Za-z_]+(?:/[A-Za-z_+-]+)*)\))?", re.IGNORECASE
)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def reset_time_from_text(text: str, now: float) -> float | None:
    """The reset time a tool announced, as epoch seconds; None when it named none.

    Understands ``...limit reached|1718000000`` (Claude Code's machine form),
    ``try again in 2 hours 5 minutes`` / ``retry in 31.5s`` (codex, gemini) and
    ``resets 3pm (Europe/Berlin)`` / ``resets at 10:30am`` (next such wall-clock
    time, in the named zone, else local time).
    """
    m = _EPOCH_AFTER_BAR.search(text)
    if m:
        return max(float(m.group(1)), now)
    m = _RETRY_IN.search(text)
    if m:
        window = re.split(r"[.;!\n]\s|[;!\n]", m.group(1), maxsplit=1)[0]
        total = sum(float(n) * _UNIT_S[unit[0].lower()] for n, unit in _DURATION_PART.findall(window))
        if total > 0:
            return now + total
    m = _RESETS_AT.search(text)
    if m:
        return _next_wall_clock(int(m.group(1)), int(m.group(2) or 0), m.group(3).lower(), m.group(4), now)
    return None


def _next_wall_clock(hour12: int, minute: int, ampm: str, zone: str | None, now: float) -> float | None:
    if not (1 <= hour12 <= 12 and 0 <= minute < 60):
        return None
    hour = hour12 % 12 + (12 if ampm == "pm" else 0)
    try:
        tz = ZoneInfo(zone) if zone else None
    except (ZoneInfoNotFoundError, ValueError):
        tz = None
    current = datetime.fromtimestamp(now, tz=tz) if tz else datetime.fromtimestamp(now).astimezone()
    target = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= current:
        target += timedelta(days=1)
    return target.timestamp()

"""How agent-queue talks to each coding-agent CLI: argv, prompt, env, output.

An ``AgentAdapter`` is data, not code: the argv template of one tool, how it
receives the prompt, which environment variables it may see, how to ask it for
its version, which structured-output parser reads its transcript, and which
patterns in its output mean "usage limit, come back later" or "login expired".
The runner (``tools.py`` executes processes) asks this module three things:

* ``prepare_invocation`` - the exact argv / env / stdin of one attempt. The
  prompt never travels as one argv element when it may be large (Linux caps a
  single argument at MAX_ARG_STRLEN = 128 KiB): every built-in adapter reads
  it from stdin or from a prompt file.
* ``assess`` - after the process exited: what the tool reported (cost,
  tokens, turns, session id) and whether this attempt is a real failure, an
  agent-side limit (requeue with ``notBefore``, no attempt counted), an
  expired login, or over the job's cost budget.
* ``tool_env`` - the minimal environment: never the daemon's AQ_* settings,
  never ``AQ_FLEET_TOKEN``, whatever a config file asks for.

Built-ins live in ``BUILTIN_ADAPTERS``; ``adapter_from_config`` merges a
``[tools.NAME]`` table of agent-queue.toml over them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent_queue.errors import BadInput, ConfigError
from agent_queue.fsutil import write_bytes_atomic
from agent_queue.jobs import Job

PromptVia = Literal["argv", "stdin", "file"]
PROMPT_VIA: tuple[PromptVia, ...] = ("argv", "stdin", "file")
OUTPUT_FORMATS = ("none", "claude-json", "codex-jsonl", "gemini-json", "aider-text")
PLACEHOLDERS = ("prompt", "prompt_file", "workdir", "job_id", "root")
# Linux MAX_ARG_STRLEN is 32 pages = 128 KiB per argv element; stay well under it.
MAX_ARGV_PROMPT_BYTES = 100 * 1024
# Only the tail of a transcript is searched for limit / login messages: they are
# printed last, and a multi-megabyte transcript must not cost a regex scan.
SCAN_TAIL_CHARS = 64 * 1024
DEFAULT_BACKOFF_S = 900.0
PROMPT_FILE_NAME = "prompt.txt"

BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_*", "TERM", "TMPDIR", "USER")
_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def _is_daemon_secret(name: str) -> bool:
    """The daemon's own settings (AQ_*) never reach a tool, the fleet token least of all."""
    return name.startswith("AQ_") or name == "AQ_FLEET_TOKEN"


@dataclass(frozen=True)
class AgentAdapter:
    """One agent CLI, described as data; see the module docstring and docs/agents.md."""

    name: str
    argv: tuple[str, ...]
    prompt_via: PromptVia = "stdin"
    env_pass: tuple[str, ...] = ()
    version_argv: tuple[str, ...] = ()
    output_format: str = "none"
    rate_limit_patterns: tuple[str, ...] = ()
    auth_patterns: tuple[str, ...] = ()
    backoff_s: float = DEFAULT_BACKOFF_S
    # Compiled once; not part of equality or the config surface.
    _rate_res: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)
    _auth_res: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rate_res", _compile(self.rate_limit_patterns, self.name, "rate_limit_patterns"))
        object.__setattr__(self, "_auth_res", _compile(self.auth_patterns, self.name, "auth_patterns"))

    def parse_output(self, text: str) -> dict[str, Any]:
        """What the tool reported about itself: costUsd, tokensIn, tokensOut, turns, sessionId (when known)."""
        return _PARSERS[self.output_format](text)

    def detect_rate_limit(self, exit_code: int, output: str, now: float) -> float | None:
        """``notBefore`` (epoch seconds) when this attempt hit a usage/rate limit, else None.

        Only a failed attempt counts (non-zero exit, or a JSON result flagged
        as an error): an agent that succeeded while *talking about* rate
        limits in its answer is not rate limited.
        """
        if not _failed(self, exit_code, output):
            return None
        tail = output[-SCAN_TAIL_CHARS:]
        if not any(p.search(tail) for p in self._rate_res):
            return None
        reset = reset_time_from_text(tail, now)
        return reset if reset is not None else now + self.backoff_s

    def detect_auth_expired(self, exit_code: int, output: str) -> bool:
        """True when a failed attempt says the login / API key is missing or expired."""
        if not _failed(self, exit_code, output):
            return False
        tail = output[-SCAN_TAIL_CHARS:]
        return any(p.search(tail) for p in self._auth_res)


def _compile(patterns: Iterable[str], tool: str, key: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for pat in patterns:
        try:
            out.append(re.compile(pat, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(f"[tools.{tool}].{key}: bad regular expression {pat!r}: {exc}") from exc
    return tuple(out)


def _failed(adapter: AgentAdapter, exit_code: int, output: str) -> bool:
    if exit_code != 0:
        return True
    return bool(adapter.parse_output(output).get("isError"))


# --------------------------------------------------------------------------- parsers


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


_PARSERS = {
    "none": parse_none,
    "claude-json": parse_claude_json,
    "codex-jsonl": parse_codex_jsonl,
    "gemini-json": parse_gemini_json,
    "aider-text": parse_aider_text,
}


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


# --------------------------------------------------------------------------- built-ins

_HTTP_LIMIT = (r"\b429\b", r"rate[ _-]?limit", r"too many requests")

BUILTIN_ADAPTERS: dict[str, AgentAdapter] = {
    "claude": AgentAdapter(
        name="claude",
        # -p reads the prompt from stdin when no prompt argument is given.
        argv=("claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"),
        prompt_via="stdin",
        env_pass=(
            "ANTHROPIC_*", "CLAUDE_CODE_*", "CLAUDE_CONFIG_DIR", "AWS_*", "GOOGLE_APPLICATION_CREDENTIALS",
            "CLOUD_ML_REGION", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
        ),
        version_argv=("claude", "--version"),
        output_format="claude-json",
        rate_limit_patterns=(
            r"usage limit reached", r"hit your (?:usage )?limit", r"\blimit reached\b.*resets",
            r"rate_limit_error", r"overloaded_error", *_HTTP_LIMIT,
        ),
        auth_patterns=(
            r"invalid api key", r"please run /login", r"oauth token (?:has )?expired", r"authentication_error",
            r"not logged in", r"credit balance is too low",
        ),
    ),
    "codex": AgentAdapter(
        name="codex",
        # A trailing "-" makes `codex exec` read the prompt from stdin.
        argv=("codex", "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "-"),
        prompt_via="stdin",
        env_pass=("OPENAI_*", "CODEX_HOME", "AZURE_OPENAI_*", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"),
        version_argv=("codex", "--version"),
        output_format="codex-jsonl",
        rate_limit_patterns=(r"usage limit", r"rate_limit_exceeded", r"quota exceeded", *_HTTP_LIMIT),
        auth_patterns=(r"\b401\b", r"unauthorized", r"please (?:log|sign) in", r"not logged in", r"refresh token"),
    ),
    "gemini": AgentAdapter(
        name="gemini",
        # -p forces headless mode and is appended to the prompt piped on stdin.
        argv=(
            "gemini", "--output-format", "json", "--approval-mode", "auto_edit",
            "-p", "Carry out the task given above.",
        ),
        prompt_via="stdin",
        env_pass=(
            "GEMINI_*", "GOOGLE_API_KEY", "GOOGLE_CLOUD_*", "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_APPLICATION_CREDENTIALS", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
        ),
        version_argv=("gemini", "--version"),
        output_format="gemini-json",
        rate_limit_patterns=(r"resource_exhausted", r"quota exceeded", r"exceeded your current quota", *_HTTP_LIMIT),
        auth_patterns=(
            r"api key not valid", r"please set an auth method", r"gemini_api_key environment variable not found",
            r"unauthenticated", r"login required",
        ),
    ),
    "aider": AgentAdapter(
        name="aider",
        argv=(
            "aider", "--message-file", "{prompt_file}", "--yes-always", "--no-auto-commits",
            "--no-suggest-shell-commands", "--no-pretty", "--no-stream", "--no-check-update",
            "--no-show-release-notes", "--no-gitignore",
        ),
        prompt_via="file",
        env_pass=(
            "AIDER_*", "OPENAI_*", "ANTHROPIC_*", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY",
            "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
        ),
        version_argv=("aider", "--version"),
        output_format="aider-text",
        rate_limit_patterns=(r"ratelimiterror", r"quota", *_HTTP_LIMIT),
        auth_patterns=(r"authenticationerror", r"invalid api key", r"api key.*(?:missing|not set|not found)"),
    ),
    # A plain command: argv comes from the job's `command`; a prompt, if any, on stdin.
    "shell": AgentAdapter(name="shell", argv=(), prompt_via="stdin"),
}


# --------------------------------------------------------------------------- config

_CONFIG_KEYS = {f.name for f in fields(AgentAdapter) if not f.name.startswith("_")} - {"name"}


def adapter_from_config(name: str, table: Mapping[str, Any]) -> AgentAdapter:
    """Merge a ``[tools.NAME]`` table over the built-in of that name (or build a new tool).

    Keys: argv, prompt_via, env_pass (replaces), env_pass_extra (appends),
    version_argv, output_format, rate_limit_patterns / auth_patterns
    (replace), rate_limit_patterns_extra / auth_patterns_extra (append),
    backoff_s. Unknown keys are refused so a typo is not silently ignored.
    """
    where = f"[tools.{name}]"
    base = BUILTIN_ADAPTERS.get(name)
    allowed = _CONFIG_KEYS | {"env_pass_extra", "rate_limit_patterns_extra", "auth_patterns_extra"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    if base is None:
        if "argv" not in table:
            raise ConfigError(f"{where}: a tool that is not built in needs an 'argv' list")
        base = AgentAdapter(name=name, argv=())
    changes: dict[str, Any] = {}
    for key in ("argv", "version_argv", "env_pass", "rate_limit_patterns", "auth_patterns"):
        if key in table:
            changes[key] = _str_tuple(table[key], f"{where}.{key}")
    for key in ("env_pass", "rate_limit_patterns", "auth_patterns"):
        extra = f"{key}_extra"
        if extra in table:
            changes[key] = changes.get(key, getattr(base, key)) + _str_tuple(table[extra], f"{where}.{extra}")
    if "prompt_via" in table:
        if table["prompt_via"] not in PROMPT_VIA:
            raise ConfigError(f"{where}.prompt_via: must be one of {', '.join(PROMPT_VIA)}")
        changes["prompt_via"] = table["prompt_via"]
    if "output_format" in table:
        if table["output_format"] not in OUTPUT_FORMATS:
            raise ConfigError(f"{where}.output_format: must be one of {', '.join(OUTPUT_FORMATS)}")
        changes["output_format"] = table["output_format"]
    if "backoff_s" in table:
        b = table["backoff_s"]
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0 < b <= 7 * 86400:
            raise ConfigError(f"{where}.backoff_s: must be a number of seconds in (0, 604800]")
        changes["backoff_s"] = float(b)
    adapter = replace(base, **changes)
    _validate(adapter, where)
    return adapter


def _str_tuple(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def _validate(adapter: AgentAdapter, where: str) -> None:
    if adapter.name != "shell" and (not adapter.argv or not adapter.argv[0]):
        raise ConfigError(f"{where}.argv: must start with a program name")
    for name in adapter.env_pass:
        if not _ENV_PATTERN.fullmatch(name):
            raise ConfigError(f"{where}.env_pass: {name!r} is not a variable name (a trailing * is allowed)")
    for item in adapter.argv:
        for ph in re.findall(r"\{([^{}]*)\}", item):
            if ph not in PLACEHOLDERS:
                raise ConfigError(f"{where}.argv: unknown placeholder {{{ph}}} (known: {', '.join(PLACEHOLDERS)})")
    uses = {ph for item in adapter.argv for ph in PLACEHOLDERS if "{" + ph + "}" in item}
    if adapter.prompt_via == "argv" and "prompt" not in uses:
        raise ConfigError(f"{where}: prompt_via = 'argv' needs a {{prompt}} placeholder in argv")
    if adapter.prompt_via == "file" and "prompt_file" not in uses:
        raise ConfigError(f"{where}: prompt_via = 'file' needs a {{prompt_file}} placeholder in argv")


# --------------------------------------------------------------------------- argv and env


def render_argv(adapter: AgentAdapter, values: Mapping[str, str]) -> list[str]:
    """Substitute ``{placeholder}`` inside each argv element; the result is argv, never a shell line.

    A value can never split into two arguments or inject an option: it only
    ever replaces its placeholder inside the element that names it.
    """
    pattern = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise BadInput(f"tool {adapter.name}: argv needs {{{key}}} but no value was given")
        return values[key]

    return [pattern.sub(sub, item) for item in adapter.argv]


def _allowed(name: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        if pat.endswith("*") and name.startswith(pat[:-1]):
            return True
        if name == pat:
            return True
    return False


def tool_env(
    adapter: AgentAdapter, base_env: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The minimal environment of a tool: base names + the adapter's pass-through + ``extra`` (job env).

    Every AQ_* name (AQ_FLEET_TOKEN above all) is stripped last, whatever
    ``env_pass`` or ``extra`` say: a tool is third-party code reading a
    third-party prompt, and must never see the fleet's credentials.
    """
    names = BASE_ENV_NAMES + adapter.env_pass
    env = {k: v for k, v in base_env.items() if _allowed(k, names)}
    env.update(extra or {})
    return {k: v for k, v in env.items() if not _is_daemon_secret(k)}


@dataclass(frozen=True)
class Invocation:
    """Everything needed to start one attempt: run ``argv`` in ``cwd`` with ``env``, feed ``stdin``."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    stdin: bytes | None
    prompt_file: Path | None


def prepare_invocation(
    adapter: AgentAdapter,
    job: Job,
    *,
    workdir: Path,
    root: Path,
    run_dir: Path,
    base_env: Mapping[str, str],
) -> Invocation:
    """Build argv / env / stdin of one attempt; writes ``run_dir/prompt.txt`` (0600) when a file is needed.

    For the ``shell`` adapter (empty argv template) the job's ``command`` is
    the argv. A prompt given ``via = "argv"`` larger than 100 KiB is refused
    here with a clear error rather than failing in execve with E2BIG.
    """
    prompt = job.prompt or ""
    prompt_file: Path | None = None
    uses_file = adapter.prompt_via == "file" or any("{prompt_file}" in a for a in adapter.argv)
    if uses_file:
        prompt_file = run_dir / PROMPT_FILE_NAME
        write_bytes_atomic(prompt_file, prompt.encode("utf-8"))
    if adapter.prompt_via == "argv" and len(prompt.encode("utf-8")) > MAX_ARGV_PROMPT_BYTES:
        raise BadInput(
            f"job {job.id}: tool {adapter.name} takes the prompt as an argument, and a "
            f"{len(prompt.encode('utf-8'))}-byte prompt exceeds the {MAX_ARGV_PROMPT_BYTES}-byte limit "
            "(set prompt_via = \"stdin\" or \"file\" in agent-queue.toml)"
        )
    values = {
        "prompt": prompt,
        "prompt_file": str(prompt_file) if prompt_file else "",
        "workdir": str(workdir),
        "job_id": job.id,
        "root": str(root),
    }
    argv = tuple(job.command) if not adapter.argv else tuple(render_argv(adapter, values))
    if not argv:
        raise BadInput(f"job {job.id}: tool {adapter.name} has no argv and the job no command")
    stdin = prompt.encode("utf-8") if adapter.prompt_via == "stdin" and job.prompt is not None else None
    env = tool_env(adapter, base_env, dict(job.env))
    return Invocation(argv=argv, env=env, cwd=workdir, stdin=stdin, prompt_file=prompt_file)


# --------------------------------------------------------------------------- verdict

Verdict = Literal["ok", "failed", "rate_limited", "auth_expired", "over_budget"]


@dataclass(frozen=True)
class Assessment:
    """What one finished attempt means for its job.

    ``ok``/``failed``: as usual (failed counts an attempt). ``rate_limited``:
    put the job back with ``not_before``, do NOT count an attempt.
    ``auth_expired`` and ``over_budget``: quarantine with ``reason``.
    ``report`` goes into result.json as is.
    """

    verdict: Verdict
    report: Mapping[str, Any]
    reason: str = ""
    not_before: float | None = None


def assess(adapter: AgentAdapter, job: Job, exit_code: int, output: str, now: float) -> Assessment:
    """Classify a finished attempt from its exit status and full output (stdout+stderr)."""
    report = {k: v for k, v in adapter.parse_output(output).items() if k != "isError"}
    report = {"tool": adapter.name, "exitCode": exit_code, **report}
    not_before = adapter.detect_rate_limit(exit_code, output, now)
    if not_before is not None:
        return Assessment("rate_limited", report, f"tool {adapter.name} hit a usage/rate limit", not_before)
    if adapter.detect_auth_expired(exit_code, output):
        return Assessment("auth_expired", report, f"tool {adapter.name}: login expired or API key invalid")
    reason = budget_exceeded(job, report)
    if reason:
        return Assessment("over_budget", report, reason)
    if exit_code != 0 or _failed(adapter, exit_code, output):
        return Assessment("failed", report, f"tool {adapter.name} exited with status {exit_code}")
    return Assessment("ok", report)


def budget_exceeded(job: Job, report: Mapping[str, Any]) -> str | None:
    """The quarantine reason when the attempt's reported cost is over ``budget.costUsd``, else None."""
    limit = job.budget.cost_usd
    cost = report.get("costUsd")
    if limit is None or not isinstance(cost, int | float):
        return None
    if float(cost) > limit:
        return f"over budget: the attempt cost ${float(cost):.4f}, budget.costUsd is ${limit:.4f}"
    return None


def transcript_name(adapter: AgentAdapter) -> str:
    """File name under the job's directory for the tool's full output (kept for post-mortems)."""
    names = {"claude-json": "transcript.json", "codex-jsonl": "transcript.jsonl", "gemini-json": "transcript.json"}
    return names.get(adapter.output_format, "transcript.log")

"""How agent-queue describes each coding-agent CLI: an ``AgentAdapter`` is data, not code.

An adapter is the argv template of one tool, how it receives the prompt,
which environment variables it may see, how to ask it for its version, which
structured-output parser reads its transcript (``agent_output``), and which
patterns in its output mean "usage limit, come back later" or "login
expired". Built-ins live in ``BUILTIN_ADAPTERS``; ``adapter_from_config``
merges a ``[tools.NAME]`` table of agent-queue.toml over them.

What is done with an adapter lives beside it: ``invocation`` builds the argv /
env / stdin of one attempt, ``assessment`` says what a finished attempt
means; ``tools`` is the runner's door to all three.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from agent_queue.agent_output import OUTPUT_FORMATS, PARSERS, reset_time_from_text
from agent_queue.errors import ConfigError

PromptVia = Literal["argv", "stdin", "file"]
PROMPT_VIA: tuple[PromptVia, ...] = ("argv", "stdin", "file")
PLACEHOLDERS = ("prompt", "prompt_file", "workdir", "job_id", "root")
# Only the tail of a transcript is searched for limit / login messages: they are
# printed last, and a multi-megabyte transcript must not cost a regex scan.
SCAN_TAIL_CHARS = 64 * 1024
DEFAULT_BACKOFF_S = 900.0

_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


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
        return PARSERS[self.output_format](text)

    def detect_rate_limit(self, exit_code: int, output: str, now: float) -> float | None:
        """``notBefore`` (epoch seconds) when this attempt hit a usage/rate limit, else None.

        Only a failed attempt counts (non-zero exit, or a JSON result flagged
        as an error): an agent that succeeded while *talking about* rate
        limits in its answer is not rate limited.
        """
        if not failed(self, exit_code, output):
            return None
        tail = output[-SCAN_TAIL_CHARS:]
        if not any(p.search(tail) for p in self._rate_res):
            return None
        reset = reset_time_from_text(tail, now)
        return reset if reset is not None else now + self.backoff_s

    def detect_auth_expired(self, exit_code: int, output: str) -> bool:
        """True when a failed attempt says the login / API key is missing or expired."""
        if not failed(self, exit_code, output):
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


def failed(adapter: AgentAdapter, exit_code: int, output: str) -> bool:
    """A non-zero exit, or a zero exit whose structured output flags an error."""
    if exit_code != 0:
        return True
    return bool(adapter.parse_output(output).get("isError"))


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

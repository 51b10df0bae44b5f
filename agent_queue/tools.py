"""The tool table and profiles: what argv a job becomes, with which environment.

A tool is data (``ToolSpec``): an argv template whose elements may hold the
placeholders ``{prompt}``, ``{prompt_file}``, ``{workdir}``, ``{job_id}`` and
``{root}``, substituted per element (never joined into a shell string), plus
how the prompt is delivered and which host variables the tool may see. The
built-in ``shell`` tool runs ``job.command`` as given. Profiles add env, extra
args, a timeout, max attempts and a ship hook. ``agent_queue.adapters`` refines
the agent templates later; keep this table small and data-like.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_queue.errors import ConfigError, InvalidJob
from agent_queue.jobs import NAME_RE, Job

SHELL = "shell"
DELIVERIES = ("argv", "stdin")
# The only host variables a tool sees unless its spec names more.
MINIMAL_ENV = ("PATH", "HOME", "LANG", "TERM", "TMPDIR", "USER")
# Never handed to a tool, whatever a spec or profile says: they steer the daemon and hold its secrets.
FORBIDDEN_ENV_PREFIX = "AQ_"
PLACEHOLDERS = ("{prompt}", "{prompt_file}", "{workdir}", "{job_id}", "{root}")


@dataclass(frozen=True)
class ToolSpec:
    """One agent CLI: its argv template, how it gets the prompt, what env it may see."""

    name: str
    argv: tuple[str, ...]
    prompt_via: str = "argv"  # "argv": placeholders only; "stdin": the prompt is also piped in
    env_pass: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """Per-profile additions; ``None`` means "job budget, else the default"."""

    name: str
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    timeout_s: float | None = None
    max_attempts: int | None = None
    ship: tuple[str, ...] = ()


# Prompts go through stdin (or a file) so a 1 MB prompt never meets ARG_MAX.
BUILTIN_TOOLS: Mapping[str, ToolSpec] = {
    SHELL: ToolSpec(SHELL, ()),
    "claude": ToolSpec("claude", ("claude", "-p"), "stdin", ("ANTHROPIC_API_KEY", "CLAUDE_CODE_USE_BEDROCK")),
    "codex": ToolSpec("codex", ("codex", "exec", "-"), "stdin", ("OPENAI_API_KEY", "CODEX_HOME")),
    "gemini": ToolSpec("gemini", ("gemini",), "stdin", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
    "aider": ToolSpec(
        "aider", ("aider", "--yes-always", "--message-file", "{prompt_file}"), "argv",
        ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"),
    ),
}
DEFAULT_PROFILE = Profile("default")


def parse_tools(table: Any, where: str) -> dict[str, ToolSpec]:
    """Merge ``[tools.NAME]`` tables over the built-ins; refuse anything malformed."""
    tools = dict(BUILTIN_TOOLS)
    for name, body in _table(table, where).items():
        w = f"{where}.{name}"
        _check_name(name, w)
        if name == SHELL:
            raise ConfigError(f"{w}: 'shell' is built in and cannot be redefined")
        body = _table(body, w)
        _no_unknown(body, {"argv", "prompt", "env"}, w)
        argv = _strings(body.get("argv"), f"{w}.argv")
        if not argv or not argv[0]:
            raise ConfigError(f"{w}.argv: needs a non-empty list of strings, the program first")
        via = body.get("prompt", "argv")
        if via not in DELIVERIES:
            raise ConfigError(f"{w}.prompt: {via!r} is not one of {', '.join(DELIVERIES)}")
        tools[name] = ToolSpec(name, argv, via, _strings(body.get("env"), f"{w}.env"))
    return tools


def parse_profiles(table: Any, where: str) -> dict[str, Profile]:
    """Read ``[profiles.NAME]``; the ``default`` profile always exists."""
    profiles = {DEFAULT_PROFILE.name: DEFAULT_PROFILE}
    for name, body in _table(table, where).items():
        w = f"{where}.{name}"
        _check_name(name, w)
        body = _table(body, w)
        _no_unknown(body, {"env", "args", "timeout_s", "max_attempts", "ship"}, w)
        env = _table(body.get("env"), f"{w}.env")
        if not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"{w}.env: values must be strings")
        profiles[name] = Profile(
            name=name,
            env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
            args=_strings(body.get("args"), f"{w}.args"),
            timeout_s=_positive(body.get("timeout_s"), f"{w}.timeout_s", float),
            max_attempts=_positive(body.get("max_attempts"), f"{w}.max_attempts", int),
            ship=_strings(body.get("ship"), f"{w}.ship"),
        )
    return profiles


def check_known(job: Job, tools: Mapping[str, ToolSpec], profiles: Mapping[str, Profile]) -> None:
    """Refuse a job naming a tool or profile this factory does not have."""
    if job.tool not in tools:
        raise InvalidJob(f"job {job.id}.tool: unknown tool {job.tool!r} (known: {', '.join(sorted(tools))})")
    if job.profile not in profiles:
        raise InvalidJob(
            f"job {job.id}.profile: unknown profile {job.profile!r} (known: {', '.join(sorted(profiles))})"
        )


def render_argv(spec: ToolSpec, profile: Profile, job: Job, values: Mapping[str, str]) -> tuple[str, ...]:
    """The argv of one attempt: ``job.command`` for shell, else the template plus profile args."""
    if spec.name == SHELL:
        return job.command
    return tuple(_substitute(arg, values) for arg in spec.argv) + profile.args


def _substitute(arg: str, values: Mapping[str, str]) -> str:
    # One pass over the template, so a prompt containing "{root}" stays literal.
    out, i = [], 0
    while i < len(arg):
        for ph in PLACEHOLDERS:
            if arg.startswith(ph, i):
                out.append(values[ph[1:-1]])
                i += len(ph)
                break
        else:
            out.append(arg[i])
            i += 1
    return "".join(out)


def tool_env(host_env: Mapping[str, str], spec: ToolSpec, profile: Profile, job: Job) -> dict[str, str]:
    """Minimal env + the tool's pass-through + profile env + job env; never an AQ_* variable."""
    names = MINIMAL_ENV + spec.env_pass
    env = {k: host_env[k] for k in names if k in host_env}
    env.update(profile.env)
    env.update(job.env)
    return {k: v for k, v in env.items() if not k.startswith(FORBIDDEN_ENV_PREFIX)}


def find_program(program: str, env: Mapping[str, str]) -> str | None:
    """Where ``program`` resolves on the tool's own PATH (None: not runnable)."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) and Path(program).is_file() else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


def _table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table")
    return value


def _no_unknown(body: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _check_name(name: str, where: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a valid name ([A-Za-z0-9._-], 1-64 chars)")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def _positive(value: Any, where: str, kind: type[int] | type[float]) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: must be a positive number")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{where}: must be a positive integer")
    return kind(value)

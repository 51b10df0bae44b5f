"""The tool table and profiles: what one attempt runs, with which environment and stdin.

Tools are ``adapters.AgentAdapter`` values: ``adapters.BUILTIN_ADAPTERS`` is the
one table of built-in agents, and a ``[tools.NAME]`` table of agent-queue.toml
merges over it through ``adapters.adapter_from_config`` (never a second copy of
the templates here). Profiles add env, extra args, a timeout, max attempts and
a ship hook. ``invocation`` turns (tool, profile, job) into the argv / env /
stdin file of one attempt, delivering the prompt the adapter's way (stdin or a
0600 file, so a 1 MB prompt never meets ARG_MAX). ``attempt_output`` and
``keep_transcript`` give the runner what ``assessment.assess`` reads and what a
post-mortem needs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent_queue.adapters import BUILTIN_ADAPTERS, AgentAdapter, adapter_from_config
from agent_queue.assessment import transcript_name
from agent_queue.errors import ConfigError, InvalidJob
from agent_queue.fsutil import write_bytes_atomic
from agent_queue.invocation import (
    BASE_ENV_NAMES,
    PROMPT_FILE_NAME,
    check_argv_prompt,
    prepare_invocation,
    tool_env,
)
from agent_queue.jobs import NAME_RE, Job

SHELL = "shell"
# Reading a multi-gigabyte transcript back into memory would stall the daemon; assess needs the end.
MAX_OUTPUT_READ = 16 * 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """Per-profile additions; ``None`` means "job budget, else the default"."""

    name: str
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    timeout_s: float | None = None
    max_attempts: int | None = None
    ship: tuple[str, ...] = ()


DEFAULT_PROFILE = Profile("default")


@dataclass(frozen=True)
class Invocation:
    """One attempt's process: ``argv`` in ``cwd`` with ``env``; ``stdin_path`` is fed to it (None: /dev/null)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    stdin_path: Path | None


def parse_tools(table: Any, where: str) -> dict[str, AgentAdapter]:
    """The built-in adapters with each ``[tools.NAME]`` table merged over them; refuse anything malformed."""
    tools = dict(BUILTIN_ADAPTERS)
    for name, body in _table(table, where).items():
        w = f"{where}.{name}"
        _check_name(name, w)
        if name == SHELL:
            raise ConfigError(f"{w}: 'shell' is built in and cannot be redefined")
        try:
            tools[name] = adapter_from_config(name, _table(body, w))
        except ConfigError as exc:  # name the file too: "<config>: tools: [tools.x].argv: ..."
            raise ConfigError(f"{where}: {exc.message}") from None
    return tools


def configured_tools(table: Any) -> tuple[str, ...]:
    """The tool names a config file names explicitly (doctor requires these to be present)."""
    return tuple(sorted(table)) if isinstance(table, dict) else ()


def host_env(env: Mapping[str, str], tools: Mapping[str, AgentAdapter]) -> dict[str, str]:
    """The snapshot of host variables any tool may ever see (read once at start-up); never AQ_*."""
    patterns = BASE_ENV_NAMES + tuple(p for t in tools.values() for p in t.env_pass)
    return tool_env(replace(BUILTIN_ADAPTERS[SHELL], env_pass=patterns), env)


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


def check_known(job: Job, tools: Mapping[str, AgentAdapter], profiles: Mapping[str, Profile]) -> None:
    """Refuse a job naming a tool or profile this factory does not have, or a prompt its tool cannot take."""
    if job.tool not in tools:
        raise InvalidJob(f"job {job.id}.tool: unknown tool {job.tool!r} (known: {', '.join(sorted(tools))})")
    if job.profile not in profiles:
        raise InvalidJob(
            f"job {job.id}.profile: unknown profile {job.profile!r} (known: {', '.join(sorted(profiles))})"
        )
    check_argv_prompt(tools[job.tool], job)


def invocation(adapter: AgentAdapter, profile: Profile, job: Job, *, workdir: Path, root: Path,
               run_dir: Path, host: Mapping[str, str], prompt_path: Path | None = None) -> Invocation:
    """argv / env / stdin of one attempt: the adapter's template + profile args, profile env under job env.

    The prompt file doubles as the stdin of a stdin-fed tool, so any size reaches it without an
    in-memory pipe writer: the job's own stored prompt (``prompt_path``), or for a job stored in an
    older layout (prompt inside job.json) a copy in ``run_dir/prompt.txt`` (0600).
    """
    job_env = replace(job, env=(*profile.env, *job.env))
    inv = prepare_invocation(adapter, job_env, workdir=workdir, root=root, run_dir=run_dir, base_env=host,
                             prompt_path=prompt_path)
    argv = inv.argv if job.tool == SHELL else inv.argv + profile.args
    stdin_path = None
    if inv.stdin is not None:
        stdin_path = prompt_path or run_dir / PROMPT_FILE_NAME
        if inv.prompt_file is None and prompt_path is None:
            write_bytes_atomic(stdin_path, inv.stdin)
    return Invocation(argv=argv, env=dict(inv.env), stdin_path=stdin_path)


def attempt_output(log_path: Path, offset: int) -> str:
    """What the tool wrote to the job log from ``offset`` on (its stdout+stderr), at most the last 16 MB."""
    try:
        with open(log_path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - MAX_OUTPUT_READ))
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def keep_transcript(folder: Path, adapter: AgentAdapter, attempt: int, text: str) -> Path:
    """Keep the attempt's full output for post-mortems: ``<folder>/attempt-<n>.<transcript name>`` (0600)."""
    path = folder / f"attempt-{attempt}.{transcript_name(adapter)}"
    write_bytes_atomic(path, text.encode("utf-8"))
    return path


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

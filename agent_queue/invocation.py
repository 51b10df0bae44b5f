"""Building one attempt's process from an adapter and a job: argv, environment, stdin or prompt file.

Job fields never pass through a shell: a value only ever replaces its
``{placeholder}`` inside the argv element that names it. The prompt never
travels as one argv element when it may be large (Linux caps a single
argument at MAX_ARG_STRLEN = 128 KiB): every built-in adapter reads it from
stdin or from a prompt file. The environment is minimal and never carries the
daemon's AQ_* settings, ``AQ_FLEET_TOKEN`` least of all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_queue.adapters import PLACEHOLDERS, AgentAdapter
from agent_queue.errors import BadInput, InvalidJob
from agent_queue.fsutil import write_bytes_atomic
from agent_queue.jobs import Job

# Linux MAX_ARG_STRLEN is 32 pages = 128 KiB per argv element; stay well under it.
MAX_ARGV_PROMPT_BYTES = 100 * 1024
PROMPT_FILE_NAME = "prompt.txt"
BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_*", "TERM", "TMPDIR", "USER")


def _is_daemon_secret(name: str) -> bool:
    """The daemon's own settings (AQ_*) never reach a tool, the fleet token least of all."""
    return name.startswith("AQ_") or name == "AQ_FLEET_TOKEN"



def check_argv_prompt(adapter: AgentAdapter, job: Job) -> None:
    """Refuse a prompt too large for a tool that takes it as one argument (checked at enqueue and before a run)."""
    takes_argv = adapter.prompt_via == "argv" or any("{prompt}" in a for a in adapter.argv)
    size = len((job.prompt or "").encode("utf-8", "surrogatepass"))
    if takes_argv and size > MAX_ARGV_PROMPT_BYTES:
        raise InvalidJob(
            f"job {job.id}.prompt: tool {adapter.name} takes the prompt as an argument, and a "
            f"{size}-byte prompt exceeds the {MAX_ARGV_PROMPT_BYTES}-byte limit "
            "(set prompt_via = \"stdin\" or \"file\" in agent-queue.toml)"
        )


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
    prompt_path: Path | None = None,
) -> Invocation:
    """Build argv / env / stdin of one attempt; the prompt file is ``prompt_path`` (the job's own stored
    prompt) when given, else ``run_dir/prompt.txt`` (0600) is written when a file is needed.

    For the ``shell`` adapter (empty argv template) the job's ``command`` is
    the argv. A prompt given ``via = "argv"`` larger than 100 KiB is refused
    here with a clear error rather than failing in execve with E2BIG.
    """
    prompt = job.prompt or ""
    prompt_file: Path | None = None
    check_argv_prompt(adapter, job)
    uses_file = adapter.prompt_via == "file" or any("{prompt_file}" in a for a in adapter.argv)
    if uses_file:
        prompt_file = prompt_path or run_dir / PROMPT_FILE_NAME
        if prompt_path is None:
            write_bytes_atomic(prompt_file, prompt.encode("utf-8"))
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

"""``agent-queue doctor``: is this host able to run the jobs it is configured for?

Checks each configured tool (on PATH? what version? a login the runner saw
expire?), git, the root directory's permissions, and the coordinator's health
when fleet mode is on, and where the fleet token could be reached: a token
file this user can read, a remote coordinator that takes the shared token
(issue #19). Each check is a ``Check``; a failed check that a
configured job needs makes the command exit 1, anything else is a warning.
The CLI only calls ``run_checks`` and prints ``format_checks``.

An expired login cannot be seen without spending a request, so the runner
records one when an attempt fails that way (``record_auth_expired``) and
doctor reports it until a later attempt of that tool succeeds
(``clear_auth_expired``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_queue.adapters import AgentAdapter
from agent_queue.errors import AQError
from agent_queue.fsutil import ensure_dir, read_json, write_json_atomic
from agent_queue.timeutil import to_rfc3339

VERSION_TIMEOUT_S = 15.0
MIN_GIT = (2, 20)  # worktree add -B / remove, push --force-with-lease=ref:expect, trailers formats


@dataclass(frozen=True)
class Check:
    """One line of the doctor table. ``required``: a failure here fails the command."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def _auth_path(root: Path, tool: str) -> Path:
    return root / ".state" / "auth" / f"{tool}.json"


def record_auth_expired(root: Path, tool: str, now: float, job_id: str, detail: str = "") -> None:
    """Remember that ``tool`` answered with an expired login (called by the runner)."""
    path = ensure_dir(root / ".state" / "auth") / f"{tool}.json"
    write_json_atomic(path, {"tool": tool, "at": to_rfc3339(now), "jobId": job_id, "detail": detail[:200]})


def clear_auth_expired(root: Path, tool: str) -> None:
    """A later attempt of ``tool`` succeeded: its login works again."""
    _auth_path(root, tool).unlink(missing_ok=True)


def _probe(argv: tuple[str, ...], env: Mapping[str, str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=dict(env), timeout=VERSION_TIMEOUT_S,
                              start_new_session=True, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{argv[0]} did not answer ({exc.__class__.__name__})"
    text = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    first = text[0][:80] if text else ""
    return proc.returncode == 0, first or f"exit {proc.returncode}"


def check_tool(name: str, adapter: AgentAdapter, *, needed: bool, env: Mapping[str, str], root: Path) -> list[Check]:
    """PATH lookup, version, and a recorded expired login of one tool."""
    if not adapter.argv:  # shell: runs the job's own command
        return []
    program = adapter.argv[0]
    found = shutil.which(program, path=env.get("PATH"))
    if not found:
        return [Check(f"tool {name}", False, f"{program} not found on PATH", needed)]
    ok, version = _probe(adapter.version_argv, env) if adapter.version_argv else (True, "no version command")
    checks = [Check(f"tool {name}", ok, f"{found}: {version}", needed)]
    auth = _auth_path(root, name)
    if auth.exists():
        try:
            seen = read_json(auth)
            detail = f"login expired (seen {seen.get('at')} in job {seen.get('jobId')}); log in again"
        except (OSError, ValueError, AttributeError):
            detail = "login expired; log in again"
        checks.append(Check(f"login {name}", False, detail, needed))
    return checks


def check_git(env: Mapping[str, str], required: bool) -> Check:
    ok, text = _probe(("git", "--version"), env)
    if not ok:
        return Check("git", False, f"git unusable: {text}", required)
    digits = [int(p) for p in text.replace("git version", "").strip().split(".")[:2] if p.isdigit()]
    if tuple(digits) < MIN_GIT:
        return Check("git", False, f"{text}; need git >= {MIN_GIT[0]}.{MIN_GIT[1]}", required)
    return Check("git", True, text, required)


def check_root(root: Path) -> list[Check]:
    """The root must be a writable directory; group/world access is a warning (tokens, transcripts live there)."""
    if not root.exists():
        parent = next((p for p in root.parents if p.exists()), None)
        ok = parent is not None and os.access(parent, os.W_OK)
        return [Check("root", ok, f"{root} does not exist yet ({'can' if ok else 'cannot'} be created)")]
    if not root.is_dir():
        return [Check("root", False, f"{root} is not a directory")]
    checks = [Check("root", os.access(root, os.W_OK | os.X_OK), f"{root} writable" if os.access(
        root, os.W_OK | os.X_OK) else f"{root} is not writable by this user")]
    mode = stat.S_IMODE(root.stat().st_mode)
    private = mode & 0o077 == 0
    checks.append(Check("root permissions", private, f"mode {mode:04o}" + ("" if private else
                        f"; others can read it, run: chmod 700 {root}"), required=False))
    return checks


def check_fleet(health: Callable[[], object]) -> Check:
    try:
        health()
    except AQError as exc:
        return Check("coordinator", False, exc.message)
    except Exception as exc:  # a health probe must never crash doctor
        return Check("coordinator", False, f"{exc.__class__.__name__}: {exc}")
    return Check("coordinator", True, "healthz ok, authenticated read ok")


def check_token_file(path: Path) -> Check:
    """A token file this user can read, a tool under this uid can read too (issue #19), a systemd credential
    (``LoadCredential=``, ``$CREDENTIALS_DIRECTORY``) included: the unit's user reads it for the unit's life."""
    if os.access(path, os.R_OK):
        return Check("token file", False, f"{path} is readable by this user, so by every tool it runs: keep it "
                     "root-owned and let systemd pass the token (EnvironmentFile=, docs/deploy.md)",
                     required=False)
    return Check("token file", True, f"{path}: not readable by this user", required=False)


def check_shared_token(host: str) -> Check:
    """The coordinator at a non-loopback ``host`` accepted a token that is not an enrolled factory's."""
    return Check("fleet token", False, f"the coordinator at {host} accepts the shared AQ_FLEET_TOKEN, which can do "
                 "everything: enrol this factory (coordinator-stub factory add) and use its own token",
                 required=False)


def run_checks(
    root: Path,
    adapters: Mapping[str, AgentAdapter],
    *,
    needed_tools: Iterable[str] = (),
    needs_git: bool = True,
    fleet_health: Callable[[], object] | None = None,
    env: Mapping[str, str] | None = None,
    token_file: Path | None = None,
    shared_token_host: str | None = None,
) -> list[Check]:
    """All checks, in table order. ``fleet_health`` (fleet mode only) raises on an unhealthy coordinator."""
    env = dict(os.environ if env is None else env)
    env.pop("AQ_FLEET_TOKEN", None)
    needed = set(needed_tools)
    checks: list[Check] = []
    for name in sorted(adapters):
        checks += check_tool(name, adapters[name], needed=name in needed, env=env, root=root)
    checks.append(check_git(env, needs_git))
    checks += check_root(root)
    if fleet_health is not None:
        checks.append(check_fleet(fleet_health))
        if checks[-1].ok and shared_token_host is not None:
            checks.append(check_shared_token(shared_token_host))
    if token_file is not None:
        checks.append(check_token_file(token_file))
    return checks


def format_checks(checks: Iterable[Check]) -> str:
    """A plain table: status, check, detail. ``FAIL`` fails the command, ``warn`` does not."""
    rows = [("ok" if c.ok else ("FAIL" if c.required else "warn"), c.name, c.detail) for c in checks]
    w0 = max([len("status"), *(len(r[0]) for r in rows)])
    w1 = max([len("check"), *(len(r[1]) for r in rows)])
    lines = [f"{'status':<{w0}}  {'check':<{w1}}  detail"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.required and not c.ok for c in checks) else 0

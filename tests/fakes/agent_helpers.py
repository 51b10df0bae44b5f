"""Test helpers for the agent/git tests: fake adapters, a process runner, a bare remote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from agent_queue.adapters import BUILTIN_ADAPTERS, AgentAdapter
from agent_queue.invocation import Invocation

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")


def fake_adapter(name: str) -> AgentAdapter:
    """The real built-in adapter with its program swapped for the fake (same flags, same prompt path)."""
    real = BUILTIN_ADAPTERS[name]
    return replace(real, argv=(sys.executable, str(FAKE_AGENT), name, *real.argv[1:]))


def run_invocation(inv: Invocation, timeout: float = 30.0) -> tuple[int, str]:
    """Run like the product does: argv, own process group, stdin fed, killed and reaped on timeout."""
    proc = subprocess.Popen(
        list(inv.argv), cwd=inv.cwd, env=dict(inv.env), stdin=subprocess.PIPE if inv.stdin is not None
        else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(inv.stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace")


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", *(["-C", str(cwd)] if cwd else []), *args],
        check=True, capture_output=True, text=True, env=env,
    ).stdout.strip()


def make_remote(tmp: Path) -> Path:
    """A bare repository with one commit on ``main`` (HEAD), standing in for GitHub."""
    seed = tmp / "seed"
    seed.mkdir()
    git("init", "-q", "-b", "main", cwd=seed)
    (seed / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial", cwd=seed)
    remote = tmp / "remote.git"
    git("clone", "-q", "--bare", str(seed), str(remote))
    return remote


def remote_branch(remote: Path, branch: str) -> str | None:
    out = git("ls-remote", str(remote), f"refs/heads/{branch}")
    return out.split("\t")[0] if out else None

"""Where a child's whole process tree is held, so that all of it can be found and killed.

Linux with a writable cgroup v2 (root, or a delegated subtree such as a systemd
user session): each child the daemon starts gets a cgroup of its own next to the
daemon's (``agent-queue.<daemon pid>.<n>``); nothing in it can leave it without
cgroup rights, and ``cgroup.kill`` ends all of it at once, even what outlived its
parents. Elsewhere (no cgroup v2, not writable: many containers; macOS) there is
no scope and the shepherd's subreaper / process-group sweep is the containment
(``shepherd``). The scope path is recorded with the job, so the next start of a
daemon killed with SIGKILL ends what is still in it (``stop_leftover``).

Linux-only paths are read through /proc; every function here degrades to
"no scope" rather than fail: containment must never stop a job from running.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from pathlib import Path

from agent_queue.shepherd import descendants

log = logging.getLogger(__name__)

PREFIX = "agent-queue."
KILL_ROUNDS = 100
_counter = itertools.count(1)
_base: list[Path | None] = []  # resolved once per process: [path] or [None]


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []  # no /proc (macOS): no cgroups


def _cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup`` on unified hosts, ``.../unified`` on hybrid ones)."""
    for line in _lines("/proc/self/mountinfo"):
        left, sep, right = line.partition(" - ")
        if sep and right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4])
    return None


def _own_cgroup() -> str | None:
    return next((line[3:].strip() or "/" for line in _lines("/proc/self/cgroup") if line.startswith("0::")), None)


def base() -> Path | None:
    """The cgroup v2 directory this daemon may create scopes in, or None (then there is no cgroup containment)."""
    if not _base:
        mount, own = _cgroup2_mount(), _own_cgroup()
        where = None if mount is None or own is None else mount / own.lstrip("/")
        usable = where is not None and (where / "cgroup.procs").is_file() and os.access(where, os.W_OK)
        _base.append(where if usable else None)
        log.debug("cgroup v2 containment: %s", where if usable else "not available")
    return _base[0]


def open_scope() -> Path | None:
    """A new, empty cgroup for one child, or None when cgroups cannot be used here."""
    parent = base()
    if parent is None:
        return None
    path = parent / f"{PREFIX}{os.getpid()}.{next(_counter)}"
    try:
        path.mkdir()
    except OSError as exc:
        log.info("cgroup v2 not usable (%s); containment falls back to the subreaper", exc.strerror or exc)
        _base[0] = None
        return None
    return path


def enter(scope: Path, pid: int) -> bool:
    """Move ``pid`` into ``scope`` (before it starts anything); False, and the scope removed, when refused."""
    try:
        (scope / "cgroup.procs").write_text(f"{pid}\n")
        return True
    except OSError as exc:
        log.info("cannot move a child into its cgroup (%s); containment falls back to the subreaper",
                 exc.strerror or exc)
        _base[0] = None
        remove(scope)
        return False


def is_scope(path: str | None) -> bool:
    """A recorded path is one of ours (a cgroup named by this module), never any other directory."""
    return bool(path) and Path(str(path)).name.startswith(PREFIX) and (Path(str(path)) / "cgroup.procs").is_file()


def kill(scope: Path) -> int:
    """SIGKILL everything in ``scope`` (``cgroup.kill`` where the kernel has it); how many were seen."""
    seen = 0
    with contextlib.suppress(OSError):
        (scope / "cgroup.kill").write_text("1\n")
    for _ in range(KILL_ROUNDS):
        pids = _procs(scope)
        if not pids:
            break
        seen += len(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return seen


def remove(scope: Path, wait_s: float = 2.0) -> None:
    """Remove an (emptied) scope; a cgroup may stay busy a moment after its last process died."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            scope.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                log.warning("cannot remove cgroup %s: %s", scope, exc.strerror or exc)
                return
            time.sleep(0.01)


def _procs(scope: Path) -> list[int]:
    try:
        return [int(x) for x in (scope / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every live descendant of ``pid`` (a leftover from a killed daemon).

    The tree is read first: once ``pid`` is dead its orphans no longer descend from it.
    """
    tree = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for kid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(kid, signal.SIGKILL)

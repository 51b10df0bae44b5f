"""The shepherd: the one process between the daemon and a child it runs (tool, verify gate, ship hook).

Why it exists: a tool's background process (``setsid sleep 300 &``) leaves the
tool's process group, so killing the group missed it: it outlived the timeout and
the daemon, and could change a worktree after the verify gate passed. The shepherd
ends every descendant when the child ends, and when the daemon dies:

* Linux: it is the child subreaper of the whole tree (``PR_SET_CHILD_SUBREAPER``),
  so an orphan, ``setsid`` or not, re-parents to it and is found and killed; it gets
  ``SIGTERM`` when the daemon dies (``PR_SET_PDEATHSIG``). The daemon also puts it in
  a cgroup v2 of its own where it may (see ``containment``).
* Everywhere (macOS too): it kills its process group and every descendant it can
  see (``ps``), and notices the daemon's death as end-of-file on its control
  socket. On macOS an orphan that left the group and lost its parent escapes.

The child leads a process group of its own (its pid is its pgid, as a tool's always
was); the shepherd is the leader of another, the daemon's handle on the whole.

Protocol, on the control socket (``CTL_FD``): the shepherd waits for ``go`` (one
line: ``go`` and the child's environment as JSON) before it starts the child, so the
daemon has recorded its pid first and the child gets exactly that environment (this
interpreter's own environment is empty, and Python may change it); the daemon may send
``stop`` (SIGTERM to the tree, ``GRACE_S`` seconds, then SIGKILL) or ``kill``
(SIGKILL now); end-of-file means the daemon is gone (``stop``). The shepherd writes
``child <pid>`` once it started the child, and ``exec-error <reason>`` if the child
cannot start. It exits the way the child
did (same code, same signal), after the tree is gone.

Run as ``python -I -S shepherd.py CTL_FD GRACE_S -- ARGV...``: standard library
only (``containment`` borrows its process table), so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SWEEP_ROUNDS = 200  # a tree that forks faster than it is killed still ends (each round kills what it sees)
EXEC_FAILED = 127
NOT_STARTED = 125


class _Tree:
    """The child we started and, once it exited, its wait status."""

    def __init__(self, child: int) -> None:
        self.child = child
        self.status: int | None = None


def main(argv: list[str]) -> int:
    ctl, grace, child_argv = int(argv[1]), float(argv[2]), argv[4:]
    os.set_inheritable(ctl, False)
    _guard_linux()
    go = _read_line(ctl)
    if not go.startswith(b"go "):
        return NOT_STARTED  # the daemon died (or changed its mind) before the child started
    env = json.loads(go[3:])
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    asked: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: asked.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the select below
    child = os.fork()
    if child == 0:
        _exec(child_argv, env, ctl)
    with contextlib.suppress(OSError):  # also in the child: whichever runs first, no signal misses the group
        os.setpgid(child, child)
    with contextlib.suppress(OSError):
        os.write(ctl, f"child {child}\n".encode())
    tree = _Tree(child)
    _watch(tree, ctl, wake_r, grace, asked)
    _sweep(tree)
    return _exit_like(tree.status)


def _guard_linux() -> None:
    """Linux: be the subreaper of the tree, and get SIGTERM when the daemon (our parent) dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before the line above: nobody would signal us
        os._exit(NOT_STARTED)


def _read_line(fd: int) -> bytes:
    """One line from the daemon (b"" at end-of-file)."""
    data = b""
    while not data.endswith(b"\n"):
        try:
            more = os.read(fd, 65536)
        except OSError:
            return b""
        if not more:
            return b""
        data += more
    return data.strip()


def _exec(argv: list[str], env: dict[str, str], ctl: int) -> None:
    """In the forked child: default signal handling, then the program; report why if it cannot start."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # the child leads a process group of its own, as a tool always did (pid == pgid)
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv only, never a shell: the point
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(ctl, f"exec-error {exc.strerror or exc}\n".encode())
    os._exit(EXEC_FAILED)


def _watch(tree: _Tree, ctl: int, wake: int, grace: float, asked: list[int]) -> None:
    """Wait for the child; on ``stop`` (or a signal, or the daemon's death) TERM the tree, KILL it after grace."""
    kill_at: float | None = None
    while True:
        _reap(tree)
        now = time.monotonic()
        if tree.status is not None or (kill_at is not None and now >= kill_at):
            return
        if asked and kill_at is None:
            kill_at = now + grace
            _signal_tree(tree, signal.SIGTERM)
        timeout = None if kill_at is None else max(0.0, kill_at - now)
        ready, _, _ = select.select([wake, ctl], [], [], timeout)
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 512)
        if ctl in ready:
            try:
                word = os.read(ctl, 64).strip()
            except OSError:
                word = b""
            if word == b"kill":
                return
            asked.append(0)  # "stop", or end-of-file: the daemon is gone


def _reap(tree: _Tree) -> None:
    """Collect every exited child (orphans re-parent to us); keep the status of ours."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == tree.child:
            tree.status = status


def _sweep(tree: _Tree) -> None:
    """SIGKILL every descendant until none is left (Linux: every orphan of the tree is our child)."""
    for _ in range(SWEEP_ROUNDS):
        alive = descendants(os.getpid())
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _reap(tree)
        time.sleep(0.002)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the killed ones as they die: never leave a zombie behind
        _reap(tree)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.002)
        except ChildProcessError:
            return


def _signal_tree(tree: _Tree, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(tree.child, sig)
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def descendants(root: int) -> list[int]:
    """Live (not zombie) processes below ``root`` (also used by the daemon for a leftover's tree)."""
    children: dict[int, list[int]] = {}
    for pid, ppid, zombie in _table():
        if not zombie:
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def _table() -> list[tuple[int, int, bool]]:
    """(pid, ppid, zombie) of every process: /proc where it exists, else ``ps``."""
    if os.path.isdir("/proc/self"):
        rows = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as fh:
                        fields = fh.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                rows.append((int(name), int(fields[1]), fields[0] == b"Z"))
        return rows
    import subprocess

    try:
        out = subprocess.run(["ps", "-axo", "pid=,ppid=,stat="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [(int(p), int(pp), st.startswith("Z")) for p, pp, st in (line.split()[:3] for line in out.splitlines())
            if p.isdigit() and pp.isdigit()]


def _exit_like(status: int | None) -> int:
    """Exit as the child did: the same code, or death by the same signal."""
    if status is None:
        return 128 + signal.SIGKILL
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.set_wakeup_fd(-1)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

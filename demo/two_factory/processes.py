"""The processes the demo starts: the factories' daemons, and what it does to them (freeze, kill, stop).

Every process runs in its own session, so a signal can reach a daemon and its
tool together, as if the whole host stopped or died; every one is reaped on
the way out, frozen ones after SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.25  # each daemon's idle poll


def console_script(name: str, module: str) -> list[str]:
    """The console script next to the interpreter running the demo, else `python -m module`."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
        return True
    return False


class Factory:
    """One `agent-queue run --fleet` daemon with its own root, working directory and log file."""

    def __init__(self, name: str, capability: str, base: Path) -> None:
        self.name = name
        self.capability = capability
        self.home = base / name
        self.root = self.home / "root"
        self.cwd = self.home / "cwd"
        self.log_path = self.home / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen_groups: list[int] = []

    def start(self, env: dict[str, str]) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        argv = [*console_script("agent-queue", "agent_queue"), "--root", str(self.root), "--factory-id", self.name,
                "run", "--fleet", "--poll", str(POLL_S), "--grace", "1"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.cwd, env={**env, "AQ_CAPABILITIES": self.capability},
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def owns(self, path: str) -> bool:
        return os.path.realpath(path).startswith(os.path.realpath(self.root) + os.sep)

    def shipped(self, job_id: str) -> bool:
        return (self.root / "shipped" / job_id).is_dir()

    def running(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(p.name for p in (self.root / "running").iterdir())
        return []

    def log_lines(self, needle: str) -> list[str]:
        with contextlib.suppress(OSError):
            return [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if needle in ln]
        return []

    def freeze(self, tool_pgid: int) -> None:
        """SIGSTOP the daemon and its tool's group: the whole host stops, as in a frozen VM."""
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen_groups = [self.pid]
        if _signal_group(tool_pgid, signal.SIGSTOP):
            self.frozen_groups.append(-tool_pgid)

    def thaw(self) -> None:
        for target in self.frozen_groups:
            if target < 0:
                _signal_group(-target, signal.SIGCONT)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, signal.SIGCONT)
        self.frozen_groups = []

    def kill(self, tool_pgid: int) -> None:
        """SIGKILL the daemon and its tool's group, and reap it: the host is gone."""
        assert self.proc is not None
        self.proc.kill()
        _signal_group(tool_pgid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the daemon's group; always reaped."""
        self.thaw()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def followed(factories: list[Factory], enabled: bool) -> Iterator[None]:
    """AQ_DEMO_VERBOSE=1: print every daemon log line as it is written, prefixed by the factory."""
    stop = threading.Event()

    def follow(f: Factory) -> None:
        offset = 0
        while not stop.wait(0.1):
            with contextlib.suppress(OSError):
                with open(f.log_path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
                cut = data.rfind(b"\n") + 1
                for line in data[:cut].decode("utf-8", "replace").splitlines():
                    print(f"      {f.name:>8} | {line}", flush=True)
                offset += cut

    threads = [threading.Thread(target=follow, args=(f,), daemon=True) for f in factories] if enabled else []
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(2)

"""Helpers to run a real coordinator-stub in tests: the HTTP server and the command seam.

Reuse them from any test::

    from tests.stubutil import running_stub, seam_command

    with running_stub(tmp_path / "coord", token="s3cret") as stub:
        requests.get(stub.url + "/v1/fleet/healthz")

    env["AQ_FLEET_API_CMD"] = seam_command(tmp_path / "coord")

``running_stub`` starts ``coordinator-stub serve`` on 127.0.0.1 with port 0
(the kernel picks a free port; no race between choosing and binding), reads
the ``listening on http://HOST:PORT`` line, polls healthz until it answers,
and on exit sends SIGTERM, waits, and kills the process group if needed, also
when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STUB_ARGV = [sys.executable, "-m", "coordinator_stub"]
START_DEADLINE_S = 20.0


@dataclass
class RunningStub:
    url: str  # base URL, e.g. http://127.0.0.1:40123 (paths start with /v1/fleet)
    state_dir: Path
    token: str | None
    proc: subprocess.Popen[bytes]
    stderr_lines: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait; returns the exit status (kills the group if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            return self.proc.wait()


def stub_env(state_dir: Path | None = None, token: str | None = None,
             extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a stub process: no inherited AQ_* settings, only what the test says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    if state_dir is not None:
        env["AQ_STUB_STATE"] = str(state_dir)
    if token is not None:
        env["AQ_FLEET_TOKEN"] = token
    env.update(extra or {})
    return env


def seam_command(state_dir: Path, lease_ttl_s: float | None = None, ignore_dry_run: bool = False) -> str:
    """The ``AQ_FLEET_API_CMD`` value that reaches a stub on ``state_dir`` through the command seam."""
    argv = [*STUB_ARGV, "--state", str(state_dir)]
    if lease_ttl_s is not None:
        argv += ["--lease-ttl", str(lease_ttl_s)]
    argv.append("call")
    if ignore_dry_run:
        argv.append("--ignore-dry-run")
    return shlex.join(argv)


@contextlib.contextmanager
def running_stub(
    state_dir: Path, token: str | None = "test-token", lease_ttl_s: float | None = None,
    extra_args: Sequence[str] = (), host: str = "127.0.0.1", fd_limit: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningStub]:
    """Start ``coordinator-stub serve`` on ``host`` port 0; yield once healthz answers; always stop it.

    ``fd_limit``: the server's RLIMIT_NOFILE (soft and hard), to probe descriptor exhaustion.
    """
    argv = [*STUB_ARGV, "--state", str(state_dir)]
    if lease_ttl_s is not None:
        argv += ["--lease-ttl", str(lease_ttl_s)]
    argv += ["serve", "--host", host, "--port", "0", *extra_args]
    proc = subprocess.Popen(argv, env=stub_env(token=token, extra=extra_env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=None if fd_limit is None else lambda: _limit_fds(fd_limit))
    stub = RunningStub("", Path(state_dir), token, proc)
    try:
        stub.url = _await_listening(stub)
        _await_healthz(stub)
        yield stub
    finally:
        stub.stop()


def _limit_fds(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _await_listening(stub: RunningStub) -> str:
    """Read stderr until ``listening on URL``; keep draining it in a thread so the pipe never fills."""
    assert stub.proc.stderr is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert stub.proc.stderr is not None
        for raw in stub.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            stub.stderr_lines.append(line)
            if line.startswith("listening on ") and not found:
                found.append(line.split("listening on ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(START_DEADLINE_S) or not found:
        raise RuntimeError("coordinator-stub serve did not start:\n" + "\n".join(stub.stderr_lines))
    return found[0]


def _await_healthz(stub: RunningStub) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        try:
            with urllib.request.urlopen(stub.url + "/v1/fleet/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline or stub.proc.poll() is not None:
                raise
        time.sleep(0.02)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def seam_call(
    state_dir: Path, method: str, path: str, body: bytes | str = b"",
    extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one ``coordinator-stub --state DIR call METHOD PATH`` process (body on stdin)."""
    data = body.encode() if isinstance(body, str) else body
    argv = [*STUB_ARGV, "--state", str(state_dir), *extra_args, "call", method, path]
    return subprocess.run(argv, input=data, capture_output=True, env=dict(env or stub_env()), timeout=60)


def seam_answer(state_dir: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One ``coordinator-stub call`` process; (status, body) of its envelope (it must exit 0)."""
    out = seam_call(state_dir, method, path, b"" if body is None else json.dumps(body))
    assert out.returncode == 0, out.stderr
    envelope = json.loads(out.stdout)
    return int(envelope["status"]), envelope.get("body")

"""Where the coordinator lives and how each party reaches it: one class per mode.

A mode answers five questions: what the header calls it; how each factory's
daemon reaches it (its environment: a seam command, or a URL and a
credential); how the demo reaches it, as an observer or on behalf of one
factory (the dead worker's late report); the lease TTL; and where its event
log is, when the demo may read one. A new mode (a PostgreSQL store behind one
`coordinator-stub serve` replica per factory; enrolled factories with a
credential each, `EnrolledServe`) is one more subclass and one more line in
`open_coordinator`; the scenarios do not change.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import time
from pathlib import Path

import requests

from .api import Api, HttpTransport, SeamTransport
from .knobs import DemoError, Knobs
from .processes import console_script

REPLICAS = 2  # PostgreSQL mode: one `serve` replica per factory
START_S = 20.0


class Coordinator:
    """A coordinator the daemons and the demo share; subclasses say how each one reaches it."""

    label = ""
    events_path: Path | None = None  # the coordinator's events.jsonl, when the demo may read it

    def __init__(self, lease_ttl_s: float, base_env: dict[str, str]) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.base_env = base_env  # the demo's environment without any AQ_* setting

    def start(self) -> None:
        """Make it ready (learn its lease TTL, start servers); DemoError if it cannot be reached."""

    def daemon_env(self, factory: str, capability: str = "") -> dict[str, str]:
        """The settings a factory's daemon needs to reach the coordinator (never printed)."""
        raise NotImplementedError

    def api(self, as_factory: str | None = None) -> Api:
        """A client of the demo's own: an observer, or one speaking for `as_factory`."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop what `start` started."""


class StubSeam(Coordinator):
    """Stub mode: `coordinator-stub` on a temp state dir, reached by everyone through the command seam."""

    label = "stub (command seam)"

    def __init__(self, knobs: Knobs, state: Path, base_env: dict[str, str]) -> None:
        super().__init__(knobs.lease_ttl_s, base_env)
        stub = knobs.stub_cmd or console_script("coordinator-stub", "coordinator_stub")
        self.prefix = [*stub, "--state", str(state), "--lease-ttl", f"{knobs.lease_ttl_s:g}", "call"]
        self.events_path = state / "events.jsonl"

    def daemon_env(self, factory: str, capability: str = "") -> dict[str, str]:
        return {"AQ_FLEET_API_CMD": shlex.join(self.prefix)}

    def api(self, as_factory: str | None = None) -> Api:
        return Api(SeamTransport(self.prefix, self.base_env))


class LiveHttp(Coordinator):
    """Live mode: the coordinator at AQ_FLEET_API, one bearer token for every party; its files are not ours."""

    def __init__(self, knobs: Knobs, base_env: dict[str, str]) -> None:
        super().__init__(knobs.lease_ttl_s, base_env)
        assert knobs.api and knobs.token
        self.url, self._token = knobs.api, knobs.token
        self.label = f"live {self.url}"

    def start(self) -> None:
        """The lease TTL is whatever the server says."""
        with self.api() as api:
            ttl = api.status().get("leaseTtlS")
        if isinstance(ttl, (int, float)):
            self.lease_ttl_s = float(ttl)

    def daemon_env(self, factory: str, capability: str = "") -> dict[str, str]:
        return {"AQ_FLEET_API": self.url, "AQ_FLEET_TOKEN": self._token}

    def api(self, as_factory: str | None = None) -> Api:
        try:
            return Api(HttpTransport(self.url, self._token))
        except ValueError as exc:
            raise DemoError(f"AQ_FLEET_API: {exc}") from None


class PgReplicas(Coordinator):
    """PostgreSQL mode: AQ_DEMO_STATE names a database; each factory reaches its own `serve` replica over HTTP.

    The replicas share nothing but the database, so a lease taken through one is
    fenced through the other: the dead worker's late report goes to its own
    factory's replica, the job's new holder renews through the other.
    """

    def __init__(self, knobs: Knobs, base: Path, base_env: dict[str, str]) -> None:
        super().__init__(knobs.lease_ttl_s, base_env)
        assert knobs.state
        self.state = knobs.state
        self.base = base
        self.stub = knobs.stub_cmd or console_script("coordinator-stub", "coordinator_stub")
        self._token = secrets.token_hex(16)
        self.ports = [_free_port() for _ in range(REPLICAS)]
        self.factories: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.label = f"postgresql, {REPLICAS} serve replicas on one database"

    def url(self, factory: str | None) -> str:
        n = self.factories.index(factory) % REPLICAS if factory in self.factories else 0
        return f"http://127.0.0.1:{self.ports[n]}"

    def start(self) -> None:
        env = {**self.base_env, "AQ_STUB_STATE": self.state, "AQ_FLEET_TOKEN": self._token}
        migrate = subprocess.run([*self.stub, "migrate"], env=env, capture_output=True, check=False, timeout=60)
        if migrate.returncode != 0:
            raise DemoError(f"AQ_DEMO_STATE: migrate failed: {migrate.stderr.decode(errors='replace').strip()}")
        for n, port in enumerate(self.ports):
            log = (self.base / f"serve-{n + 1}.log").open("wb")
            self.procs.append(subprocess.Popen(
                [*self.stub, "--lease-ttl", f"{self.lease_ttl_s:g}", "serve", "--port", str(port)], env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))
        for n, proc in enumerate(self.procs):
            _await_serve(f"serve replica {n + 1}", self.ports[n], proc, self.base / f"serve-{n + 1}.log")

    def daemon_env(self, factory: str, capability: str = "") -> dict[str, str]:
        if factory not in self.factories:
            self.factories.append(factory)
        return {"AQ_FLEET_API": self.url(factory), "AQ_FLEET_TOKEN": self._token}

    def api(self, as_factory: str | None = None) -> Api:
        return Api(HttpTransport(self.url(as_factory), self._token))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EnrolledServe(Coordinator):
    """Enrolled mode (AQ_DEMO_ENROLL=1): one `serve` with no shared token; every party has its own credential.

    Before `serve` starts, the demo enrols itself (`token add --scope admin`: it
    enqueues, reads and reaps); each factory is enrolled with its capability when
    its daemon is set up (`factory add`) and reads its token from a 0600 file
    (`AQ_FLEET_TOKEN_FILE`). The dead worker's late report goes out under that
    factory's own token, so the coordinator's answer is about fencing, not about
    who may speak for whom.
    """

    label = "enrolled (serve, a token per factory, no shared token)"

    def __init__(self, knobs: Knobs, base: Path, base_env: dict[str, str]) -> None:
        super().__init__(knobs.lease_ttl_s, base_env)
        state = base / "coordinator"
        self.events_path = state / "events.jsonl"
        self.base = base
        self.prefix = [*(knobs.stub_cmd or console_script("coordinator-stub", "coordinator_stub")),
                       "--state", str(state)]
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        admin = self._enrol("token", "add", "--scope", "admin", "--name", "two-factory-demo")  # before serve starts
        self._tokens: dict[str | None, str] = {None: admin}  # None: the demo's own; else by factory

    def _enrol(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], env=self.base_env, capture_output=True, check=False,
                              timeout=60)
        if done.returncode != 0:
            raise DemoError(f"coordinator-stub {' '.join(args[:2])}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode().strip()

    def start(self) -> None:
        log_path = self.base / "serve.log"
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, "--lease-ttl", f"{self.lease_ttl_s:g}", "serve", "--port", str(self.port)],
                env=self.base_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        _await_serve("serve", self.port, self.proc, log_path)

    def daemon_env(self, factory: str, capability: str = "") -> dict[str, str]:
        if factory not in self._tokens:
            caps = ["--capability", capability] if capability else []
            self._tokens[factory] = self._enrol("factory", "add", factory, *caps)
        path = self.base / "tokens" / factory
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._tokens[factory] + "\n")
        return {"AQ_FLEET_API": self.url, "AQ_FLEET_TOKEN_FILE": str(path)}

    def api(self, as_factory: str | None = None) -> Api:
        return Api(HttpTransport(self.url, self._tokens.get(as_factory, self._tokens[None])))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _await_serve(name: str, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until `serve` on `port` answers healthz; DemoError with its log when it exits or takes too long."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/fleet/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.1)
    log = log_path.read_text(errors="replace")[-2000:]
    raise DemoError(f"{name} did not come up; its log:\n{log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def open_coordinator(knobs: Knobs, base: Path, base_env: dict[str, str]) -> Coordinator:
    """The mode the knobs ask for: live when AQ_FLEET_API and AQ_FLEET_TOKEN are both set, PostgreSQL when
    AQ_DEMO_STATE names a database, else stub."""
    if knobs.live:
        return LiveHttp(knobs, base_env)
    if knobs.enroll:
        return EnrolledServe(knobs, base, base_env)
    if knobs.state:
        return PgReplicas(knobs, base, base_env)
    return StubSeam(knobs, base / "coordinator", base_env)

"""Shared plumbing of the benchmark scripts: timing, statistics, child processes, result files.

Every figure is a ratio to a floor measured in the same run (these machines
are noisy), so each script measures its floor next to its figure and saves
both in ``<results>/<name>.json`` with the machine's core count. Nothing here
asserts a time: the scripts report, ``docs/performance.md`` interprets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent  # the venv the benchmark runs in: its console scripts and python
PYTHON = sys.executable
STUB = str(BIN / "coordinator-stub")
AQ = str(BIN / "agent-queue")


def parse_args(doc: str | None) -> argparse.Namespace:
    """The two flags every script takes: ``--smoke`` (tiny sizes) and ``--out DIR``."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs, measures nothing")
    ap.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results directory")
    return ap.parse_args()


def summary(samples: Sequence[float]) -> dict[str, float]:
    """median, min, max, p99 and count of a list of samples (seconds or rates)."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "p99": p99, "n": len(s)}


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn``."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def save(out: Path, name: str, figure: dict[str, Any], smoke: bool) -> Path:
    """Write ``<out>/<name>.json`` (plain write: results are not state) and print one line."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "smoke": smoke, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), **figure}
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{name}: {json.dumps(figure.get('headline', {}), sort_keys=True)} -> {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env(**extra: str) -> dict[str, str]:
    """A clean environment for children: no AQ_* from the caller's shell, no fleet token.

    Everything else, PYTHONDONTWRITEBYTECODE included, is inherited as the
    user's shell has it: a regular install has its bytecode compiled by pip,
    so that flag costs an installed product nothing, and forcing it either way
    would measure a set-up users do not have.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQ_")}
    env.update(extra)
    return env


def spawn(argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so ``stop`` can end all of it)."""
    return subprocess.Popen(argv, env=env if env is not None else bench_env(), start_new_session=True, **kw)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal the child's group, wait, escalate to SIGKILL; always reaped."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


@contextmanager
def running(argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(argv, env, **kw)
    try:
        yield proc
    finally:
        stop(proc)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``cond`` until truthy; RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def serve_stub(state: Path | str, env: dict[str, str] | None = None,
               args: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``coordinator-stub serve`` (a state dir or a database URL) on a free loopback port; (process, URL)."""
    port = free_port()
    proc = spawn([STUB, "--state", str(state), "serve", "--host", "127.0.0.1", "--port", str(port), *args], env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"coordinator-stub serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_for(up, 20, "coordinator-stub serve to listen")
    except BaseException:
        stop(proc)
        raise
    return proc, url


def seam_call(state: Path, method: str, path: str, body: dict[str, Any] | None = None,
              env: dict[str, str] | None = None) -> tuple[int, Any]:
    """One ``coordinator-stub --state DIR call METHOD PATH`` process; returns (status, body)."""
    res = subprocess.run([STUB, "--state", str(state), "call", method, path],
                         input=json.dumps(body or {}).encode(), capture_output=True, env=env or bench_env(),
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"seam call {method} {path} exited {res.returncode}: {res.stderr.decode()[-300:]}")
    answer = json.loads(res.stdout)
    return int(answer["status"]), answer["body"]


def enqueue_true(state: Path, n: int, prefix: str = "job") -> list[str]:
    """Enqueue ``n`` trivial jobs (command ``true``) in-process through the core, one transaction each."""
    from coordinator_stub.core import Coordinator
    from coordinator_stub.stores.file import JsonStore

    coord = Coordinator(JsonStore(state), time.time)
    ids = [f"{prefix}-{i:06d}" for i in range(n)]
    for job_id in ids:
        coord.enqueue({"id": job_id, "command": ["true"]})
    return ids


def _setup_store() -> Any:
    from coordinator_stub.stores.base import Tx
    from coordinator_stub.stores.memory import MemoryStore

    class NoCopyTx(Tx):
        """Shares the hot document instead of deep-copying it per operation (no rollback: set-up only)."""

        def __init__(self, store: MemoryStore) -> None:
            super().__init__(store.hot)
            self._store = store

        def _load_archived(self, job_id: str) -> dict[str, Any] | None:
            return self._store.archive.get(job_id)

        def iter_archived(self) -> Iterator[dict[str, Any]]:
            yield from {**self._store.archive, **self.pending_archive}.values()

        def _load_spec(self, job_id: str) -> dict[str, Any]:
            spec: dict[str, Any] = self._store.specs[job_id]
            return spec

    class SetupStore(MemoryStore):
        @contextmanager
        def transaction(self) -> Iterator[Tx]:
            tx = NoCopyTx(self)
            yield tx
            new, gone = tx.split_specs()  # as JsonStore: specs out of the hot document
            self.specs.update(new)
            self.archive.update(tx.pending_archive)
            self.hot = tx.hot
            for job_id in gone:
                self.specs.pop(job_id, None)
            self.events.extend(tx.events)

    return SetupStore()


class History:
    """Builds coordinator state fast: real core operations on a MemoryStore, then dumped to a state dir.

    Going through the core keeps every record exactly what the stub would
    write; the in-memory store skips the per-operation fsync, which would
    turn 100k jobs of set-up into many minutes. ``dump`` writes plain files
    (set-up data, not state anyone depends on).
    """

    def __init__(self) -> None:
        from coordinator_stub.core import Coordinator

        self.store = _setup_store()
        self.clock = [time.time()]
        self.coord = Coordinator(self.store, lambda: self.clock[0])
        self.seq = 0

    def terminal(self, n: int) -> None:
        """Add ``n`` shipped jobs: enqueue, claim, report each.

        Queued jobs are set aside meanwhile: every claim scans the queue, and
        100k claims over 1k queued jobs would make set-up quadratic.
        """
        jobs = self.store.hot["jobs"]
        self.store.hot["jobs"] = {}
        try:
            for _ in range(n):
                job_id = self._enqueue("done")
                view = self.coord.claim("history", [])
                assert view is not None and view["job"]["id"] == job_id, view
                self.coord.report(job_id, "history", view["lease"]["leaseEpoch"], "shipped")
        finally:
            self.store.hot["jobs"] = {**jobs, **self.store.hot["jobs"]}
        self.store.events.clear()

    def queued(self, n: int, prefix: str = "q", priority: int = 0) -> list[str]:
        ids = [self._enqueue(prefix, priority) for _ in range(n)]
        self.store.events.clear()
        return ids

    def bulk_queued(self, n: int, prefix: str = "bq") -> None:
        """Add ``n`` queued jobs fast: one through the core, the rest its copies with their own id and seq.

        ``queued`` costs O(queue) per enqueue (a commit looks at every hot record); a 100k or 1M deep
        queue needs records made without it, identical in shape to what the core makes.
        """
        import copy

        [tmpl_id] = self.queued(1, prefix=f"{prefix}-tmpl")
        rec, spec = self.store.hot["jobs"][tmpl_id], self.store.specs[tmpl_id]
        jobs, specs = self.store.hot["jobs"], self.store.specs
        for _ in range(n - 1):
            self.seq += 1
            self.store.hot["seq"] += 1
            job_id = f"{prefix}-{self.seq:07d}"
            clone = copy.copy(rec)
            clone["seq"] = self.store.hot["seq"]
            clone["spec"] = type(rec["spec"])({**rec["spec"], "id": job_id})
            jobs[job_id] = clone
            specs[job_id] = {**spec, "id": job_id}

    def finish_first(self, n: int) -> None:
        """Claim and ship the ``n`` jobs first in claim order (mirrors what a measurement did on disk)."""
        for _ in range(n):
            view = self.coord.claim("history", [])
            assert view is not None
            self.coord.report(view["job"]["id"], "history", view["lease"]["leaseEpoch"], "shipped")
        self.store.events.clear()

    def _enqueue(self, prefix: str, priority: int = 0) -> str:
        self.seq += 1
        job_id = f"{prefix}-{self.seq:07d}"
        self.coord.enqueue({"id": job_id, "command": ["true"], "priority": priority})
        return job_id

    def dump(self, state: Path) -> None:
        """Write the hot document and every archive file not yet written into ``state``."""
        from coordinator_stub.stores.base import STATE_VERSION
        from coordinator_stub.stores.file import JsonStore

        store = JsonStore(state)
        store.files.ensure_dirs()  # (a store creates them with its first write; these files come first here)
        for job_id, rec in self.store.archive.items():
            path = Path(store.files.archive_file(job_id))
            if not path.exists():
                path.write_text(json.dumps(rec), encoding="utf-8")
        for job_id in self.store.hot["jobs"]:
            Path(store.files.spec_file(job_id)).write_text(json.dumps(self.store.specs[job_id]), encoding="utf-8")
        Path(store.state_path).write_text(json.dumps({**self.store.hot, "version": STATE_VERSION}), encoding="utf-8")
        Path(store.journal_path).unlink(missing_ok=True)  # the snapshot above is the whole state: no older journal


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


def fill_local_inbox(root: Path, n: int, command: Sequence[str] = ("true",)) -> None:
    """Enqueue ``n`` jobs into an offline root in-process (200 CLI spawns would dwarf the figure)."""
    from agent_queue.inbox import LocalQueue
    from agent_queue.jobs import Job

    queue = LocalQueue(root).init()
    for i in range(n):
        queue.enqueue(Job.from_dict({"id": f"j-{i:05d}", "command": list(command)}, where="bench"))


def fleet_unavailable(tmp: Path) -> str | None:
    """Why this build's daemon cannot run in fleet mode (None: it can)."""
    state = tmp / "probe-stub"
    env = bench_env(AQ_FLEET="1", AQ_FLEET_API_CMD=f"{STUB} --state {state} call")
    res = subprocess.run([AQ, "--root", str(tmp / "probe-root"), "--factory-id", "probe", "run", "--once"],
                         env=env, capture_output=True, timeout=60, check=False)
    if res.returncode != 0:
        return res.stderr.decode(errors="replace").strip().splitlines()[-1][:200]
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` plus its reaped children (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime


def rss_mb(pid: int) -> float | None:
    """Resident set size in MB (``ps``, which macOS and Linux both have)."""
    res = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, check=False)
    try:
        return int(res.stdout.strip()) / 1024
    except ValueError:
        return None


def events(state: Path) -> list[dict[str, Any]]:
    """The stub's events.jsonl, parsed (empty when absent)."""
    try:
        text = (state / "events.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fleet_env(state: Path, ttl: float | None = None) -> dict[str, str]:
    ttl_arg = f" --lease-ttl {ttl}" if ttl else ""
    return bench_env(AQ_FLEET="1", AQ_FLEET_API_CMD=f"{STUB} --state {state}{ttl_arg} call")

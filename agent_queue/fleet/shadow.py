"""Shadow mode: ask the coordinator what it would have handed out, record the verdict, act on nothing.

With ``AQ_FLEET=1 AQ_FLEET_ROUTE=0 AQ_FLEET_SHADOW=1`` the local inbox stays
authoritative. After each local decision (a job taken, or none) the runner
calls :meth:`ShadowProbe.observe`, which claims from the coordinator as
``<factoryId>-shadow`` with ``dryRun:true``, releases any real lease a
dry-run-ignoring coordinator hands back, compares, appends one JSON line to
``<root>/.state/fleet-shadow.log`` and sends a ``shadow:true`` report whose
answer is ignored. The coordinator work runs in a daemon worker thread and the
caller waits at most ``timeout_s``: a hung coordinator costs the real job that
long, never more, and every failure is counted and logged once per kind.

:func:`summarize` reads the log back for ``agent-queue fleet-shadow-report``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent_queue import fsutil
from agent_queue.errors import AQError, BadInput, StateError
from agent_queue.jobs import Job, Lease
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

log = logging.getLogger(__name__)

AGREE = "AGREE"
DIVERGE = "DIVERGE"
COORD_EMPTY = "COORD_EMPTY"
LOCAL_EMPTY = "LOCAL_EMPTY"
IDLE = "IDLE"
VERDICTS = (AGREE, DIVERGE, COORD_EMPTY, LOCAL_EMPTY)
SHADOW_SUFFIX = "-shadow"
RELEASE_REASON = "shadow: dry-run claim returned a real lease"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_RECENT = 10


def shadow_log_path(root: Path) -> Path:
    """Where the verdicts of the factory rooted at ``root`` go."""
    return root / ".state" / "fleet-shadow.log"


def compare(local_job_id: str | None, coord_job_id: str | None) -> str:
    """The verdict for one iteration; ``IDLE`` when neither side had work."""
    if local_job_id is None:
        return IDLE if coord_job_id is None else LOCAL_EMPTY
    if coord_job_id is None:
        return COORD_EMPTY
    return AGREE if local_job_id == coord_job_id else DIVERGE


class ShadowClient(Protocol):
    """The part of ``agent_queue.fleet.client.FleetClient`` shadow mode uses."""

    def claim(self, dry_run: bool = ..., factory_id: str | None = ...) -> tuple[Job, Lease | None] | None: ...

    def release(self, lease: Lease, reason: str, retry: bool = ..., count_attempt: bool = ...) -> object: ...

    def shadow_report(
        self, verdict: str, local_job_id: str | None, coord_job_id: str | None, factory_id: str
    ) -> object: ...


class ShadowErrors:
    """Failure counters per kind (``claim.transport_error``, ``report.timeout``, ``busy``...).

    The first failure of a kind is logged at WARNING; later ones only count,
    so a coordinator that is down for a day does not flood the daemon's log.
    Thread-safe: abandoned workers report here too.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, detail: str) -> None:
        with self._lock:
            count = self._counts.get(kind, 0) + 1
            self._counts[kind] = count
        if count == 1:
            log.warning("shadow: %s: %s (ignored; further %s failures are only counted)", kind, detail, kind)
        else:
            log.debug("shadow: %s #%d: %s", kind, count, detail)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class _Garbage(Exception):
    """The client handed back something that is not ``None`` or ``(Job, Lease | None)``."""


@dataclass
class _Attempt:
    """One shadow query, shared between the caller and its worker thread."""

    local_job_id: str | None
    send_idle: bool
    decided: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stage: str = "claim"
    abandoned: bool = False
    verdict: str | None = None
    coord_job_id: str | None = None
    failure: str | None = None

    def enter(self, stage: str) -> bool:
        """Move to ``stage``; False if the caller gave up (the stage must then be skipped)."""
        with self.lock:
            self.stage = stage
            return not self.abandoned

    def abandon(self) -> str:
        """Mark the attempt abandoned; return the stage it hung in."""
        with self.lock:
            self.abandoned = True
            return self.stage


class ShadowProbe:
    """Runs one shadow query per runner iteration; never raises, never blocks past ``timeout_s``.

    At most one query is in flight: if the previous one is still hung (its
    thread abandoned after a timeout), the next iteration is skipped and
    counted as ``busy`` rather than piling up threads on a dead coordinator.
    """

    def __init__(
        self,
        client: ShadowClient,
        factory_id: str,
        log_path: Path,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        log_idle: bool = False,
        clock: Callable[[], float] = time.time,
        errors: ShadowErrors | None = None,
    ) -> None:
        self.client = client
        self.factory_id = factory_id
        self.shadow_factory_id = factory_id + SHADOW_SUFFIX
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.log_idle = log_idle
        self.clock = clock
        self.errors = errors if errors is not None else ShadowErrors()
        self._worker: threading.Thread | None = None

    def observe(self, iteration: int, local_job_id: str | None) -> str | None:
        """Shadow the local decision of ``iteration``; return the verdict, or None if there is none.

        ``IDLE`` (neither side had work) is returned but only logged and
        reported when ``log_idle`` is set. Every failure returns None.
        """
        try:
            return self._observe(iteration, local_job_id)
        except Exception as exc:  # a bug here must not reach the real job either
            self.errors.record("unexpected", f"{type(exc).__name__}: {exc}")
            return None

    def _observe(self, iteration: int, local_job_id: str | None) -> str | None:
        if self._worker is not None and self._worker.is_alive():
            self._fail(iteration, "busy", "the previous shadow query is still running; skipped")
            return None
        deadline = time.monotonic() + self.timeout_s
        attempt = _Attempt(local_job_id, send_idle=self.log_idle)
        self._worker = threading.Thread(target=self._work, args=(attempt,), name="aq-shadow", daemon=True)
        self._worker.start()
        if not attempt.decided.wait(self.timeout_s):
            stage = attempt.abandon()
            self._fail(iteration, f"{stage}.timeout", f"no answer within {self.timeout_s}s; abandoned")
            return None
        if attempt.verdict is None:
            self._append(self._record(iteration, error=attempt.failure or "unexpected"))
            return None
        if attempt.verdict != IDLE or self.log_idle:
            self._append(self._record(iteration, verdict=attempt.verdict, coord=attempt.coord_job_id,
                                      local=local_job_id))
        if not attempt.done.wait(max(0.0, deadline - time.monotonic())):
            stage = attempt.abandon()
            self.errors.record(f"{stage}.timeout", f"no answer within {self.timeout_s}s; abandoned")
        return attempt.verdict

    def _work(self, attempt: _Attempt) -> None:
        """Worker thread: claim, decide, release a real lease if any, report. Catches everything."""
        try:
            lease = self._claim(attempt)
            attempt.decided.set()
            if lease is not None:
                attempt.enter("release")  # released even when abandoned: never leak a lease
                self._guard("release", lambda: self.client.release(
                    lease, RELEASE_REASON, retry=True, count_attempt=False))
            verdict = attempt.verdict
            if verdict is not None and (verdict != IDLE or attempt.send_idle) and attempt.enter("report"):
                self._guard("report", lambda: self.client.shadow_report(
                    verdict, attempt.local_job_id, attempt.coord_job_id, self.shadow_factory_id))
        finally:
            attempt.decided.set()
            attempt.done.set()

    def _claim(self, attempt: _Attempt) -> Lease | None:
        """Ask for a dry-run claim and set the verdict; on failure set ``failure`` and return None."""
        try:
            job_id, lease = _unpack(self.client.claim(dry_run=True, factory_id=self.shadow_factory_id))
        except Exception as exc:
            attempt.failure = "claim." + _kind(exc)
            self.errors.record(attempt.failure, _detail(exc))
            return None
        if lease is not None:
            self.errors.record("dry_run_ignored", f"coordinator leased {job_id} to a dry-run claim; releasing it")
        attempt.coord_job_id = job_id
        attempt.verdict = compare(attempt.local_job_id, job_id)
        return lease

    def _guard(self, stage: str, call: Callable[[], object]) -> None:
        try:
            call()  # the answer is deliberately ignored: shadow never acts on the coordinator
        except Exception as exc:
            self.errors.record(f"{stage}.{_kind(exc)}", _detail(exc))

    def _fail(self, iteration: int, kind: str, detail: str) -> None:
        self.errors.record(kind, detail)
        self._append(self._record(iteration, error=kind))

    def _record(self, iteration: int, *, verdict: str | None = None, error: str | None = None,
                local: str | None = None, coord: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"time": to_rfc3339(self.clock()), "iteration": iteration,
                               "factoryId": self.shadow_factory_id}
        if verdict is not None:
            out.update({"verdict": verdict, "localJobId": local, "coordJobId": coord})
        if error is not None:
            out["error"] = error
        return out

    def _append(self, record: Mapping[str, Any]) -> None:
        try:
            fsutil.ensure_dir(self.log_path.parent)
            fsutil.append_line(self.log_path, json.dumps(record, sort_keys=True))
        except OSError as exc:
            self.errors.record("log_write", f"{self.log_path}: {exc.strerror or exc}")


def _unpack(result: object) -> tuple[str | None, Lease | None]:
    if result is None:
        return None, None
    if not isinstance(result, tuple) or len(result) != 2:
        raise _Garbage(f"claim returned {type(result).__name__}, not (job, lease)")
    job, lease = result
    if not isinstance(job, Job) or not (lease is None or isinstance(lease, Lease)):
        raise _Garbage(f"claim returned ({type(job).__name__}, {type(lease).__name__})")
    return job.id, lease


def _kind(exc: Exception) -> str:
    if isinstance(exc, AQError):
        return exc.code
    if isinstance(exc, _Garbage):
        return "garbage"
    return "unexpected"


def _detail(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# ---- reading the log back: agent-queue fleet-shadow-report -------------------------------


@dataclass(frozen=True)
class ShadowRecord:
    """One verdict line of the shadow log."""

    time: float
    iteration: int | None
    verdict: str
    local_job_id: str | None
    coord_job_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"time": to_rfc3339(self.time), "iteration": self.iteration, "verdict": self.verdict,
                "localJobId": self.local_job_id, "coordJobId": self.coord_job_id}


@dataclass(frozen=True)
class ShadowSummary:
    """Counts over the shadow log. ``IDLE`` and errors are outside ``total`` and the rate."""

    log_path: Path
    exists: bool
    since: float | None
    counts: Mapping[str, int]
    idle: int
    errors: Mapping[str, int]
    corrupt: int
    recent: tuple[ShadowRecord, ...]  # newest first, every verdict but AGREE

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def agreement_rate(self) -> float | None:
        """AGREE / total, or None when there is no verdict to judge by."""
        return self.counts[AGREE] / self.total if self.total else None


def summarize(log_path: Path, since: float | None = None, recent: int = DEFAULT_RECENT) -> ShadowSummary:
    """Count the verdicts in ``log_path`` at or after ``since`` (epoch seconds).

    A missing log is an empty summary. A line that is not a shadow record
    (truncated by a crash, edited by hand) is counted in ``corrupt`` and
    skipped; it is counted whatever ``since`` is, having no time to trust.
    A log that cannot be read at all raises ``StateError``.
    """
    counts = dict.fromkeys(VERDICTS, 0)
    errors: dict[str, int] = {}
    idle = corrupt = 0
    last: deque[ShadowRecord] = deque(maxlen=max(recent, 0))
    exists = log_path.exists()
    for raw in _lines(log_path) if exists else iter(()):
        parsed = _parse_line(raw)
        if parsed is None:
            corrupt += 1
            continue
        when, verdict, error, record = parsed
        if since is not None and when < since:
            continue
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
        elif verdict == IDLE:
            idle += 1
        elif record is not None:
            counts[record.verdict] += 1
            if record.verdict != AGREE and last.maxlen:
                last.append(record)
    return ShadowSummary(log_path, exists, since, counts, idle, dict(sorted(errors.items())), corrupt,
                         tuple(reversed(last)))


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    yield raw
    except OSError as exc:
        raise StateError(f"shadow log {path}: cannot read it ({exc.strerror or exc})") from exc


def _parse_line(raw: bytes) -> tuple[float, str | None, str | None, ShadowRecord | None] | None:
    try:
        data = json.loads(raw.decode("utf-8"))
        when = parse_rfc3339(data["time"])
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    error, verdict = data.get("error"), data.get("verdict")
    if isinstance(error, str) and error:
        return when, None, error, None
    if verdict == IDLE:
        return when, IDLE, None, None
    if verdict not in VERDICTS:
        return None
    iteration = data.get("iteration")
    record = ShadowRecord(when, iteration if isinstance(iteration, int) else None, verdict,
                          _opt_str(data.get("localJobId")), _opt_str(data.get("coordJobId")))
    return when, verdict, None, record


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def format_summary(summary: ShadowSummary) -> str:
    """The human report: counts, agreement rate, errors, most recent divergences."""
    if not summary.exists:
        return f"no shadow log at {summary.log_path} (shadow mode has not run here)"
    since = f" since {to_rfc3339(summary.since)}" if summary.since is not None else ""
    lines = [f"shadow log {summary.log_path}{since}"]
    lines += [f"  {verdict:<12} {summary.counts[verdict]:>8}" for verdict in VERDICTS]
    lines.append(f"  {'total':<12} {summary.total:>8}")
    rate = summary.agreement_rate
    lines.append(f"  {'agreement':<12} " + ("     n/a (no verdicts)" if rate is None
                                           else f"{rate:>8.1%} ({summary.counts[AGREE]}/{summary.total})"))
    lines.append(f"  {'idle':<12} {summary.idle:>8} (not in total)")
    errors = ", ".join(f"{k} {v}" for k, v in summary.errors.items())
    lines.append(f"  {'errors':<12} {sum(summary.errors.values()):>8}" + (f" ({errors})" if errors else ""))
    if summary.corrupt:
        lines.append(f"  {'corrupt':<12} {summary.corrupt:>8} lines skipped")
    if summary.recent:
        lines.append("most recent divergences (newest first):")
        lines += [f"  {to_rfc3339(r.time)} iteration {r.iteration if r.iteration is not None else '?'} "
                  f"{r.verdict:<11} local={r.local_job_id or '-'} coord={r.coord_job_id or '-'}"
                  for r in summary.recent]
    return "\n".join(lines)


def summary_to_dict(summary: ShadowSummary) -> dict[str, Any]:
    return {
        "log": str(summary.log_path),
        "exists": summary.exists,
        "since": None if summary.since is None else to_rfc3339(summary.since),
        "counts": dict(summary.counts),
        "total": summary.total,
        "agreementRate": summary.agreement_rate,
        "idle": summary.idle,
        "errors": dict(summary.errors),
        "corruptLines": summary.corrupt,
        "recentDivergences": [r.to_dict() for r in summary.recent],
    }


def summary_to_json(summary: ShadowSummary) -> str:
    """The ``--json`` output: one stable JSON document."""
    return json.dumps(summary_to_dict(summary), indent=2, sort_keys=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """``--since``: an RFC 3339 time, or a duration back from ``now`` (``90s``, ``15m``, ``2h``, ``7d``)."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise BadInput(
            f"--since: {text[:40]!r} is neither an RFC 3339 time nor a duration like 15m, 2h, 7d"
        ) from None

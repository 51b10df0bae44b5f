"""Text for people: how ``status``, ``fleet-status``, ``jobs`` and ``show`` print their data.

One module so the same things read the same everywhere: a count line, a running job or a lease, a
composite's rollup, an age, a state's colour. Data comes in as the plain dicts the operations return
(the same ones ``--json`` prints); nothing here reads files or settings. Colour is the caller's
decision (a TTY, and ``NO_COLOR`` unset); values are never Python reprs (``None`` prints as ``-``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# ANSI SGR codes per state word, local and coordinator vocabularies alike.
_COLOURS = {"shipped": "32", "passed": "32", "live": "32", "ok": "32",
            "running": "33", "leased": "33", "busy": "33", "stale": "33", "blocked": "33",
            "quarantine": "31", "quarantined": "31", "failed": "31", "fenced": "31", "offline": "31",
            "cancelled": "35", "inbox": "36", "queued": "36"}
CLEAR = "\x1b[H\x1b[2J"


def paint(text: str, word: str, color: bool) -> str:
    """``text`` in the colour of the state ``word`` (unchanged without colour or for an unknown word)."""
    code = _COLOURS.get(word)
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def value(v: Any) -> str:
    """A setting or field for people: ``-`` for none, yes/no, lists joined, never a Python repr."""
    if v is None or v == [] or v == {}:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list | tuple):
        return ", ".join(value(x) for x in v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={value(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def age(seconds: Any) -> str:
    """``45s``, ``3m05s``, ``2h04m``, ``3d02h``; ``-`` when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def counts(data: Mapping[str, Any], color: bool) -> str:
    """``inbox: 2  running: 1  shipped: 10 ...``: one line, each state in its colour when it is not zero."""
    return "  ".join(paint(f"{k}: {n}", k, color and bool(n)) for k, n in data.items())


def table(rows: Iterable[Iterable[str]], header: Iterable[str]) -> list[str]:
    """Left-aligned columns sized to their widest cell (cells may carry colour codes)."""
    grid = [list(header), *[list(r) for r in rows]]
    widths = [max(_width(r[i]) for r in grid) for i in range(len(grid[0]))]
    return ["  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths, strict=True)).rstrip() for r in grid]


def _width(cell: str) -> int:
    """Printed width: colour codes take no room."""
    out, skip = 0, False
    for ch in cell:
        if ch == "\x1b":
            skip = True
        elif skip:
            skip = ch != "m"
        else:
            out += 1
    return out


def composite_line(comp: Mapping[str, Any], color: bool) -> str:
    """One composite's rollup, the same in ``status`` and ``fleet-status``."""
    parts = ", ".join(f"{k} {n}" for k, n in (comp.get("counts") or {}).items() if n)
    verify = f", verify {comp['verify']}" if comp.get("verify") else ""
    reason = f": {comp['reason']}" if comp.get("reason") else ""
    state = str(comp.get("state"))
    return f"composite: {comp.get('id')} {paint(state, state, color)} ({parts}{verify}){reason}"


def composite_lines(comp: Mapping[str, Any], color: bool, *, fleet: bool) -> list[str]:
    """A composite's rollup line and, for a planned composite, its plan's line."""
    from agent_queue.plan_job import plan_line
    from agent_queue.plan_view import dag_lines

    plan = plan_line(comp, fleet=fleet)
    dag = (comp.get("plan") or {}).get("dag") or []
    return [composite_line(comp, color)] + ([plan] if plan else []) + dag_lines(dag)


def holding(job_id: Any, *, tool: Any = None, attempt: Any = None, epoch: Any = None, pid: Any = None,
            elapsed: Any = None, left: Any = None) -> str:
    """A job being worked on, the parts that are known: ``j1 (tool shell, attempt 1, pid 812, 12s)`` in
    ``status``, ``j1 (epoch 3, 40s left)`` for a lease in ``fleet-status``."""
    parts = [f"tool {tool}" if tool is not None else "", f"attempt {attempt}" if attempt is not None else "",
             f"epoch {epoch}" if epoch is not None else "", f"pid {pid}" if pid is not None else "",
             age(elapsed) if elapsed is not None else "", f"{age(left)} left" if left is not None else ""]
    inner = ", ".join(p for p in parts if p)
    return f"{job_id} ({inner})" if inner else str(job_id)


# --- status ---------------------------------------------------------------------------------


def status(report: Mapping[str, Any], *, verbose: bool, color: bool) -> str:
    lines = [counts(report["counts"], color)]
    daemon = report["daemon"]
    if daemon.get("running"):
        up = f", up {age(daemon['upS'])}" if daemon.get("upS") is not None else ""
        lines.append(f"daemon: pid {value(daemon.get('pid'))} since {value(daemon.get('startedAt'))} (factory "
                     f"{value(daemon.get('factoryId'))}{up})")
        hold = daemon.get("backoff")
        if isinstance(hold, Mapping):  # disk full: the daemon takes no work until a write fits (``diskfull``)
            lines.append(f"daemon: backing off since {value(hold.get('since'))}, no new work: "
                         f"{value(hold.get('reason'))} (next try {value(hold.get('retryAt'))})")
    else:
        lines.append("daemon: not running")
    lines.append(f"mode: {mode_text(report['fleetMode'], report['fleetFlags'])}"
                 + ("" if daemon.get("running") else " (as a daemon started now would run)"))
    for job in report["running"]:
        lines.append("running: " + holding(job["id"], tool=job.get("tool"), attempt=job.get("attempt"),
                                           pid=job.get("pid"), elapsed=job.get("elapsedS")))
    lines += [line for c in report.get("composites", []) for line in composite_lines(c, color, fleet=False)]
    if verbose:
        lines.append("settings:")
        lines += [f"  {k}: {value(v)}" for k, v in report["settings"].items()]
    return "\n".join(lines)


def mode_text(mode: str, flags: str) -> str:
    """``route (fleet=1 route=1 shadow=0)``: the words of the daemon's start line."""
    return f"{mode} ({flags})"


# --- fleet-status -----------------------------------------------------------------------------


def fleet_status(report: Mapping[str, Any], color: bool) -> str:
    """The coordinator's side; this host appears only as the flags it would run with, never as a factory."""
    ttl = report.get("leaseTtlS")
    lines = [f"coordinator: {report['coordinator']}" + (f" (lease TTL {value(ttl)}s)" if ttl is not None else ""),
             f"flags: {report['flagsText']} (mode {report['mode']} on this host)"]
    lines += [f"warning: {w}" for w in report["flags"]["warnings"]]
    lines.append(f"jobs: {counts(report['counts'], color)}")
    for lease in report.get("leases", []):
        lines.append(f"lease: {lease.get('jobId')} holder {lease.get('factoryId')} epoch {lease.get('leaseEpoch')} "
                     f"left {age(lease.get('timeLeftS'))}")
    for f in report["factories"]:
        held = ", ".join(holding(h["jobId"], epoch=h.get("leaseEpoch"), left=h.get("timeLeftS")) for h in f["holds"])
        busy = "busy" if f["holds"] else "idle"
        lines.append(f"factory: {f['factoryId']} {paint(f['liveness'], f['liveness'], color)} "
                     f"{paint(busy, busy, color)} (last seen {age(f.get('ageS'))} ago)"
                     + (f": holds {held}" if held else ""))
    for s in report.get("stranded", []):
        lines.append(f"{paint('stranded', 'quarantined', color)}: {s.get('jobId')}: {s.get('why')}")
    lines += [line for c in report.get("composites", []) for line in composite_lines(c, color, fleet=True)]
    return "\n".join(lines)


# --- jobs and show ----------------------------------------------------------------------------


def jobs(listing: Mapping[str, Any], *, fleet: bool, color: bool) -> str:
    header = ["id", "state", "tool", "attempts", "age", *(["factory"] if fleet else []), "reason"]
    rows = []
    for j in listing["jobs"]:
        state = str(j.get("state"))
        rows.append([str(j["id"]), paint(state, state, color), value(j.get("tool")), value(j.get("attempts")),
                     age(j.get("ageS")), *([value(j.get("factory"))] if fleet else []), value(j.get("reason"))])
    return "\n".join(table(rows, header)) if rows else "no jobs"


def more(listing: Mapping[str, Any]) -> str | None:
    """The paging note when the listing was cut short (printed on stderr)."""
    shown, total = len(listing["jobs"]), listing.get("total")
    if not isinstance(total, int) or total <= shown:
        return None
    return f"showing the {shown} most recent of {total} jobs; --limit N for more (--limit 0: all)"


def show(detail: Mapping[str, Any], color: bool) -> str:
    state = str(detail.get("state", "-"))
    lines = [f"job {detail['id']}  {paint(state, state, color)}"]
    for key in ("attempts", "maxAttempts", "round", "leaseEpoch", "reason", "enqueuedAt", "updatedAt",
                "finishedAt", "cancelledAt", "notBefore", "path"):
        if detail.get(key) is not None:
            lines.append(f"  {key}: {value(detail[key])}")
    if detail.get("prompt"):
        p = detail["prompt"]
        lines.append(f"  prompt: {p['bytes']} bytes in {p['path']}: {p['preview']}")
    if detail.get("rollup"):
        lines.append("  " + composite_line({"id": detail["id"], **detail["rollup"]}, color))
    if detail.get("spec") is not None:
        lines.append("spec:")
        lines += [f"  {k}: {value(v)}" for k, v in detail["spec"].items() if k != "prompt"]
    if detail.get("lease"):
        lease = detail["lease"]
        lines.append(f"lease: epoch {value(lease.get('leaseEpoch'))} held by {value(lease.get('factoryId'))}, "
                     f"expires {value(lease.get('expiresAt'))}")
    if detail.get("leases"):
        lines.append("lease history:")
        lines += ["  " + r for r in table(
            ([value(h.get("leaseEpoch")), value(h.get("factoryId")), value(h.get("claimedAt")),
              value(h.get("endedAt")), value(h.get("end")), value(h.get("reason"))] for h in detail["leases"]),
            ["epoch", "factory", "claimed", "ended", "end", "reason"])]
    attempts = detail.get("history")
    if isinstance(attempts, list) and attempts:
        lines.append("attempts:")
        lines += ["  " + r for r in table(
            ([value(a.get("attempt")), value(a.get("startedAt") or a.get("endedAt")), value(a.get("factory")),
              value(a.get("epoch")), value(a.get("exitCode")), value(a.get("verifyExitCode")),
              value(a.get("costUsd")), paint(str(a.get("outcome")), str(a.get("outcome")), color),
              value(a.get("reason"))] for a in attempts),
            ["#", "when", "where", "epoch", "exit", "verify", "cost", "outcome", "reason"])]
    log = detail.get("log")
    if log:
        size = "no log yet" if log.get("bytes") is None else f"{log['bytes']} bytes"
        lines.append(f"log: {log['path']} ({size}); agent-queue logs {detail['id']}")
    return "\n".join(lines)


# --- watch ----------------------------------------------------------------------------------------


def watch(frame: Callable[[], str], every_s: float, write: Callable[[str], None], *, clear: bool,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Print ``frame()`` every ``every_s`` until interrupted: redrawn in place on a terminal (like
    ``rq info -i``), one frame after another (a blank line between) anywhere else."""
    first = True
    while True:
        text = frame()
        write((CLEAR if clear else "" if first else "\n") + text + "\n")
        first = False
        sleep(every_s)

"""What the dashboard shows, computed from API answers and event lines: pure functions, no I/O, no clock.

Each page's JSON is built here from what the coordinator answers (``status``,
``list_jobs``, ``get_job``) and what its audit log says (``events``): rows of
the queue and their filters, a job's leases with their epochs and the story of
each 409, a composite's DAG laid out in layers, the shadow agreement rate over
time. Secrets never leave: a spec is redacted before it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent_queue.fleet.shadow import AGREE, VERDICTS
from agent_queue.settings import REDACTED, redact_url
from agent_queue.timeutil import parse_rfc3339, to_rfc3339

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_SECRET_KEY = re.compile(r"secret|token|passw|api[_-]?key|credential|auth|private|cookie|session", re.I)
_URL_WITH_USER = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*@", re.I)
_ROW_STATES = ("queued", "leased", "shipped", "quarantined", "composite")


# ---------------------------------------------------------------- secrets


def redact(value: Any, key: str = "") -> Any:
    """A copy of a spec with secrets replaced: every env value, any field named like a secret, URL passwords."""
    if key == "env":
        if isinstance(value, Mapping):
            return dict.fromkeys(value, REDACTED)
        if isinstance(value, list):
            return [[pair[0], REDACTED] if isinstance(pair, list) and pair else REDACTED for pair in value]
    if key and _SECRET_KEY.search(key) and not isinstance(value, (Mapping, list)):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and _URL_WITH_USER.match(value):
        return redact_url(value)
    return value


# ---------------------------------------------------------------- the queue


def job_row(view: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the queue: what a person scans for, never the spec's prompt or command."""
    job, meta, lease = view["job"], view["meta"], view.get("lease") or {}
    rollup = view.get("rollup") or {}
    return {
        "id": job["id"], "state": meta["state"], "kind": job.get("kind", "leaf"),
        "priority": job.get("priority", 0), "attempts": meta["attempts"], "maxAttempts": meta["maxAttempts"],
        "leaseEpoch": meta["leaseEpoch"], "notBefore": meta.get("notBefore"), "reason": meta.get("reason"),
        "enqueuedAt": meta["enqueuedAt"], "finishedAt": meta.get("finishedAt"), "parentId": job.get("parentId"),
        "factory": lease.get("factoryId"), "expiresAt": lease.get("expiresAt"),
        "requires": job.get("requires", []), "rollup": rollup.get("state"), "rollupCounts": rollup.get("counts"),
        "children": len(job.get("childIds", [])),
    }


def row_state(row: Mapping[str, Any]) -> str:
    """The state a row is filed under: a composite parent under ``composite``, whatever its rollup says."""
    return "composite" if row["kind"] == "composite" else str(row["state"])


def select_rows(rows: Sequence[Mapping[str, Any]], state: str | None = None, text: str | None = None,
                factory: str | None = None, page: int = 1, size: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of the rows that pass the filters, and the counts per state of what passed the others."""
    size = min(max(1, size), MAX_PAGE_SIZE)
    needle = (text or "").strip().lower()
    kept = [r for r in rows if (not needle or needle in str(r["id"]).lower()
                                or needle in str(r.get("reason") or "").lower())
            and (not factory or r.get("factory") == factory)]
    counts = dict.fromkeys(_ROW_STATES, 0)
    for r in kept:
        counts[row_state(r)] = counts.get(row_state(r), 0) + 1
    if state:
        kept = [r for r in kept if row_state(r) == state]
    pages = max(1, -(-len(kept) // size))
    page = min(max(1, page), pages)
    return {"total": len(kept), "page": page, "pages": pages, "size": size, "counts": counts,
            "rows": list(kept[(page - 1) * size: page * size])}


# ---------------------------------------------------------------- the fleet


def fleet(status: Mapping[str, Any], capabilities: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Each factory: when it was last seen, what it can do (as it last said in a claim), what it holds."""
    held: dict[str, list[dict[str, Any]]] = {}
    for lease in status["leases"]:
        held.setdefault(lease["factoryId"], []).append(lease)
    factories = [{"factoryId": f["factoryId"], "lastSeen": f["lastSeen"],
                  "capabilities": list(capabilities.get(f["factoryId"], ())),
                  "capabilitiesKnown": f["factoryId"] in capabilities,
                  "holds": held.get(f["factoryId"], [])} for f in status["factories"]]
    factories.sort(key=lambda f: f["lastSeen"], reverse=True)
    return {"factories": factories, "counts": status["counts"], "leases": status["leases"],
            "leaseTtlS": status.get("leaseTtlS")}


# ---------------------------------------------------------------- one job


def leases(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The job's leases in epoch order, from its event lines: who, when, renewals, how each ended, its 409s."""
    by_epoch: dict[int, dict[str, Any]] = {}

    def lease(epoch: int, factory: Any) -> dict[str, Any]:
        return by_epoch.setdefault(epoch, {"epoch": epoch, "factoryId": factory, "claimedAt": None,
                                           "expiresAt": None, "renewals": 0, "end": None, "refused": []})

    for ev in events:
        op, status, epoch = ev.get("op"), int(ev.get("status", 200)), ev.get("leaseEpoch")
        if not isinstance(epoch, int) or epoch < 1 or op == "enqueue":
            continue
        if status == 409:
            lease(epoch, ev.get("factoryId"))["refused"].append(_refusal(ev))
            continue
        if status >= 400 or ev.get("dryRun") or ev.get("replay"):
            continue
        if op == "claim":
            entry = lease(epoch, ev.get("factoryId"))
            entry.update(factoryId=ev.get("factoryId"), claimedAt=ev.get("time"), expiresAt=ev.get("expiresAt"))
        elif op == "renew":
            entry = lease(epoch, ev.get("factoryId"))
            entry["renewals"] += 1
            entry["expiresAt"] = ev.get("expiresAt", entry["expiresAt"])
        elif op in ("report", "release", "reclaim"):
            lease(epoch, ev.get("factoryId"))["end"] = {
                "op": op, "at": ev.get("time"), "result": ev.get("outcome") or ev.get("state"),
                "reason": ev.get("reason")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _refusal(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {"op": ev.get("op"), "at": ev.get("time"), "code": ev.get("code"), "factoryId": ev.get("factoryId"),
            "outcome": ev.get("outcome")}


def story(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each 409 of the job told in one sentence: what was refused, and why the lease was no longer that one."""
    lines = []
    for entry in history:
        for ref in entry["refused"]:
            what = f"{ref['op']}{'(' + ref['outcome'] + ')' if ref.get('outcome') else ''}"
            line = (f"{ref['at']}: {what} by {ref['factoryId']} with epoch {entry['epoch']} refused "
                    f"({ref['code']})")
            end = entry.get("end")
            if end and end["at"] and end["at"] <= ref["at"]:
                how = {"reclaim": "the reaper reclaimed it (lease expired)", "release": "it was released",
                       "report": f"it was reported {end['result']}"}.get(end["op"], end["op"])
                line += f": epoch {entry['epoch']} had ended at {end['at']}, {how}"
            later = [e for e in history if e["epoch"] > entry["epoch"] and e["claimedAt"]
                     and e["claimedAt"] <= ref["at"]]
            if later:
                holder = later[-1]
                line += f"; epoch {holder['epoch']} was held by {holder['factoryId']} since {holder['claimedAt']}"
            lines.append(line)
    return lines


# ---------------------------------------------------------------- composites


def dag(parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parent's children as a layered DAG: a node's layer is after its phase's predecessors and its deps."""
    states = {c["id"]: c["state"] for c in (parent.get("rollup") or {}).get("children", [])}
    specs = {v["job"]["id"]: v["job"] for v in children}
    ids = list(parent["job"].get("childIds") or [v["job"]["id"] for v in children])
    # A planned composite's children exist only in its plan until a person approves it: drawn as ``planned``.
    for node in ((parent.get("rollup") or {}).get("plan") or {}).get("dag") or []:
        if node["id"] not in ids:
            ids.append(node["id"])
            specs[node["id"]] = {"id": node["id"], "dependsOn": node.get("dependsOn") or []}
            states[node["id"]] = node["state"]
    phases = sorted({int(specs.get(i, {}).get("phase") or 0) for i in ids})
    layer: dict[str, int] = {}
    base = 0
    for phase in phases:
        members = [i for i in ids if int(specs.get(i, {}).get("phase") or 0) == phase]
        for i in members:
            _layer_of(i, specs, set(members), layer, base, set())
        base = 1 + max((layer[i] for i in members), default=base - 1)
    nodes: list[dict[str, Any]] = []
    rows: dict[int, int] = {}
    for i in ids:
        row = rows.get(layer[i], 0)
        rows[layer[i]] = row + 1
        deps = [d for d in specs.get(i, {}).get("dependsOn", []) if d in layer]
        nodes.append({"id": i, "state": states.get(i, "queued"), "layer": layer[i], "row": row,
                      "phase": int(specs.get(i, {}).get("phase") or 0), "dependsOn": deps})
    edges = [[d, n["id"]] for n in nodes for d in n["dependsOn"]]
    return {"nodes": nodes, "edges": edges, "layers": 1 + max(layer.values(), default=-1),
            "rows": max(rows.values(), default=0), "rollup": parent.get("rollup")}


def _layer_of(i: str, specs: Mapping[str, Mapping[str, Any]], members: set[str], layer: dict[str, int],
              base: int, seen: set[str]) -> int:
    if i in layer:
        return layer[i]
    seen.add(i)  # a cycle cannot be enqueued; the guard keeps a bad record from recursing forever
    deps = [d for d in specs.get(i, {}).get("dependsOn", []) if d in members and d not in seen]
    layer[i] = max([base] + [_layer_of(d, specs, members, layer, base, seen) + 1 for d in deps])
    return layer[i]


# ---------------------------------------------------------------- shadow mode


def shadow(reports: Sequence[Mapping[str, Any]], now: float, bucket_s: float = 300.0, buckets: int = 24,
           recent: int = 50) -> dict[str, Any]:
    """The agreement rate (AGREE over the four verdicts; IDLE is left out, as in docs/shadow.md) per time
    bucket, over all reports held, and the most recent disagreements."""
    start = now - bucket_s * buckets
    series: list[dict[str, Any]] = [{"start": to_rfc3339(start + k * bucket_s), "total": 0, "agree": 0}
                                    for k in range(buckets)]
    total = agree = 0
    disagreements = []
    for rep in reports:
        verdict = rep.get("verdict")
        if verdict not in VERDICTS:
            continue
        total += 1
        agree += verdict == AGREE
        when = _when(rep)
        if when is not None and start <= when < now:
            slot = series[min(buckets - 1, int((when - start) // bucket_s))]
            slot["total"] += 1
            slot["agree"] += verdict == AGREE
        if verdict != AGREE:
            disagreements.append({"at": rep.get("receivedAt") or rep.get("at"), "factoryId": rep.get("factoryId"),
                                  "verdict": verdict, "localJobId": rep.get("localJobId"),
                                  "coordJobId": rep.get("coordJobId")})
    for slot in series:
        slot["rate"] = slot["agree"] / slot["total"] if slot["total"] else None
    return {"total": total, "agree": agree, "rate": agree / total if total else None, "series": series,
            "bucketS": bucket_s, "divergences": disagreements[::-1][:recent]}


def _when(rep: Mapping[str, Any]) -> float | None:
    for key in ("receivedAt", "at"):
        value = rep.get(key)
        if isinstance(value, str):
            try:
                return parse_rfc3339(value)
            except ValueError:
                continue
    return None


# ---------------------------------------------------------------- events


def select_events(events: Sequence[Mapping[str, Any]], op: str | None = None, job: str | None = None,
                  factory: str | None = None, status: str | None = None, limit: int = 200,
                  before: int | None = None) -> list[Mapping[str, Any]]:
    """Newest first, each filter an exact match (``status`` also ``4xx`` / ``409``), ``before`` a seq cursor."""
    out = []
    for ev in reversed(events):
        if before is not None and int(ev.get("seq", 0)) >= before:
            continue
        if (op and ev.get("op") != op) or (job and ev.get("jobId") != job) or \
                (factory and ev.get("factoryId") != factory) or (status and not _status_matches(ev, status)):
            continue
        out.append(ev)
        if len(out) >= limit:
            break
    return out


def _status_matches(ev: Mapping[str, Any], wanted: str) -> bool:
    got = str(ev.get("status", ""))
    return got[0] == wanted[0] if wanted.endswith("xx") and got else got == wanted

"""Administration of the PostgreSQL store: ``migrate`` (apply the schema) and ``copy`` (a state directory into it).

``copy`` moves a fleet from the file store without losing a job: it reads the
directory inside one file-store transaction (its lock held, so nothing changes
meanwhile) and writes everything into an empty, migrated database in one
database transaction under the store's advisory lock: queued and leased
records as they are (a lease keeps its factory, epoch and expiry, so a zombie
stays fenced), specs, the archive, history versions, the event and shadow logs
and the counters. Either all of it lands or none (a failed copy can be re-run).
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from agent_queue.errors import BadInput
from coordinator_stub.settings import redact_url
from coordinator_stub.stores.base import summarize
from coordinator_stub.stores.pg_migrations import ADVISORY_KEY, check_version, current_version, migrate
from coordinator_stub.stores.postgres import INSERT_JOB, db_errors, dumps, job_row

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from coordinator_stub.stores.base import Tx


def migrate_database(url: str) -> tuple[list[str], int]:
    """Apply the missing migrations; (names applied, schema version now)."""
    with db_errors(f"database {redact_url(url)}"), psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        applied = migrate(conn)
        return applied, current_version(conn)


def copy_dir_to_database(src: str, url: str) -> dict[str, int]:
    """Copy the state directory ``src`` into the empty database ``url``; counts of what was copied."""
    from coordinator_stub.stores.file import JsonStore

    root = Path(src)
    if not (root / "state.json").is_file() and not (root / "journal.jsonl").is_file():
        raise BadInput(f"--from {src}: not a coordinator-stub state directory (no state.json or journal.jsonl)")
    where = f"database {redact_url(url)}"
    store = JsonStore(root)
    with store.transaction() as tx, db_errors(where), psycopg.connect(url, connect_timeout=10) as conn:
        check_version(conn, url)
        snapshot = _read_dir(tx, store)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_KEY,))
            _refuse_unless_empty(cur, url)
            _write(cur, snapshot)
    return {"hot": len(snapshot["jobs"]), "archived": len(snapshot["archive"]), "history": len(snapshot["history"]),
            "events": len(snapshot["events"]), "shadowReports": len(snapshot["shadows"])}


def _read_dir(tx: Tx, store: Any) -> dict[str, Any]:
    jobs: dict[str, dict[str, Any]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for job_id, rec in tx.hot["jobs"].items():
        spec = tx.spec_of(rec)
        specs[job_id] = spec
        jobs[job_id] = {**json.loads(json.dumps(rec)), "spec": dict(summarize(spec))}
    history = []
    history_dir = Path(store.files.history_dir)
    if history_dir.is_dir():
        def order(path: Path) -> tuple[str, int]:
            stem, _, n = path.name[: -len(".json")].rpartition(".")
            return stem, int(n) if n.isdigit() else 0
        history = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(history_dir.glob("*.json"), key=order)]
    return {"meta": {k: v for k, v in tx.hot.items() if k != "jobs"}, "jobs": jobs, "specs": specs,
            "archive": list(tx.iter_archived()), "history": history,
            "events": _lines(Path(store.events_path)), "shadows": _lines(Path(store.shadow_path))}


def _lines(path: Path) -> list[str]:
    """The whole JSON lines of a log (a torn last line, never acknowledged, is left behind)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        out.append(line)
    return out


def _refuse_unless_empty(cur: psycopg.Cursor[tuple[Any, ...]], url: str) -> None:
    row = cur.execute("SELECT (SELECT count(*) FROM aq_jobs) + (SELECT count(*) FROM aq_archive), "
                      "(SELECT (doc->>'seq')::bigint FROM aq_meta WHERE id = 1)").fetchone()
    if row is None or row[0] or row[1]:
        raise BadInput(f"--to {redact_url(url)}: the database already holds jobs; copy needs an empty, migrated one")


def _write(cur: psycopg.Cursor[tuple[Any, ...]], snap: dict[str, Any]) -> None:
    cur.execute("UPDATE aq_meta SET doc = %s WHERE id = 1", (dumps(snap["meta"]),))
    if snap["jobs"]:
        cur.executemany(INSERT_JOB, [job_row(job_id, rec) for job_id, rec in snap["jobs"].items()])
        cur.executemany("INSERT INTO aq_specs (id, spec) VALUES (%s, %s)",
                        [(job_id, dumps(spec)) for job_id, spec in snap["specs"].items()])
    if snap["archive"]:
        cur.executemany("INSERT INTO aq_archive (id, seq, state, rec) VALUES (%s, %s, %s, %s)",
                        [(r["spec"]["id"], r["seq"], r["state"], dumps(r)) for r in snap["archive"]])
    if snap["history"]:
        cur.executemany("INSERT INTO aq_history (id, rec) VALUES (%s, %s)",
                        [(r["spec"]["id"], dumps(r)) for r in snap["history"]])
    if snap["events"]:
        cur.executemany("INSERT INTO aq_events (ev) VALUES (%s)", [(line,) for line in snap["events"]])
    if snap["shadows"]:
        cur.executemany("INSERT INTO aq_shadow_reports (report) VALUES (%s)", [(line,) for line in snap["shadows"]])

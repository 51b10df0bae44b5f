"""The one request dispatcher shared by both front ends (command seam and HTTP).

``handle(coord, method, path, body)`` takes the raw request and answers
``(status, body)`` exactly as docs/fleet-api.md specifies; every expected
failure becomes ``{"error": {"code", "message"}}`` with the status its
``errors.py`` class carries. Request fields are checked here, at the edge, so
the core only ever sees typed values.
"""

from __future__ import annotations

from agent_queue import cjson
from agent_queue.errors import AQError, BadInput, TooLarge
from agent_queue.fsutil import is_safe_name
from agent_queue.timeutil import parse_rfc3339
from coordinator_stub.core import Coordinator

TYPE_CHECKING = False  # typing stays unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    Response = tuple[int, dict[str, Any] | None]

PREFIX = "/v1/fleet"
MAX_BODY = 1024 * 1024
MAX_LIMIT = 100_000  # GET /jobs?limit=N


class MethodNotAllowed(AQError):
    code = "method_not_allowed"
    exit_code = 2
    http_status = 405


class RouteNotFound(AQError):
    code = "not_found"
    exit_code = 2
    http_status = 404


def handle(coord: Coordinator, method: str, path: str, body: bytes | None, *, ignore_dry_run: bool = False) -> Response:
    """Answer one request; never raises an ``AQError`` (it becomes the JSON error body)."""
    try:
        return _dispatch(coord, method.upper(), path, body or b"", ignore_dry_run)
    except AQError as exc:
        return exc.http_status, exc.to_body()


def _dispatch(coord: Coordinator, method: str, path: str, raw: bytes, ignore_dry_run: bool) -> Response:
    # Split by hand: urllib.parse costs ~3 ms of import on every seam call (benchmark B1).
    url_path, _, url_query = path.partition("#")[0].partition("?")
    parts = url_path.rstrip("/").split("/")
    if url_path.rstrip("/") == PREFIX or not url_path.startswith(PREFIX + "/"):
        raise RouteNotFound(f"{method} {url_path}: no such route")
    rest = parts[3:]  # after "", "v1", "fleet"
    query = _parse_query(url_query)
    key = rest[0] if len(rest) == 1 else ("jobs/{id}" if len(rest) == 2 and rest[0] == "jobs" else
                                          f"jobs/{{id}}/{rest[2]}" if len(rest) == 3 and rest[0] == "jobs" else "")
    routes = _ROUTES.get(key)
    if routes is None:
        raise RouteNotFound(f"{method} {url_path}: no such route")
    fn = routes.get(method)
    if fn is None:
        raise MethodNotAllowed(f"{method} {url_path}: method not allowed (allowed: {', '.join(sorted(routes))})")
    job_id = rest[1] if len(rest) >= 2 else ""
    req = _Request(coord, job_id, query, raw if method == "POST" else b"", ignore_dry_run)
    return fn(req)


def _parse_query(query: str) -> dict[str, list[str]]:
    if not query:
        return {}
    from urllib.parse import parse_qs

    return parse_qs(query)


class _Request:
    def __init__(self, coord: Coordinator, job_id: str, query: dict[str, list[str]], raw: bytes, ignore: bool):
        self.coord = coord
        self.job_id = job_id
        self.query = query
        self.raw = raw
        self.ignore_dry_run = ignore
        self._body: Any = None

    @property
    def body(self) -> Mapping[str, Any]:
        """The request body as a JSON object (an empty body is ``{}``)."""
        if self._body is None:
            self._body = _parse_body(self.raw)
        return self._body  # type: ignore[no-any-return]


def _parse_body(raw: bytes) -> Any:
    if len(raw) > MAX_BODY:  # the same 413 as the HTTP front end's, over the seam too
        raise TooLarge(f"request body: {len(raw)} bytes, at most {MAX_BODY} allowed")
    if not raw.strip():
        return {}
    try:
        data = cjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"request body: malformed JSON ({exc})") from exc
    except RecursionError:
        raise BadInput("request body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise BadInput("request body: must be a JSON object")
    return data


# ---------------------------------------------------------------- request fields


def _factory(body: Mapping[str, Any]) -> str:
    value = body.get("factoryId")
    if not isinstance(value, str) or not is_safe_name(value):
        raise BadInput(f"factoryId: {str(value)[:40]!r} is not a valid factory id ([A-Za-z0-9._-], 1-128 chars)")
    return value


def _epoch(body: Mapping[str, Any]) -> int:
    value = body.get("leaseEpoch")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput(f"leaseEpoch: must be a non-negative integer, got {str(value)[:40]!r}")
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadInput(f"{name}: must be true or false")
    return value


def _opt_str(body: Mapping[str, Any], name: str, limit: int = 4096) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadInput(f"{name}: must be a string of at most {limit} characters")
    return value


def _caps(body: Mapping[str, Any]) -> list[str]:
    value = body.get("capabilities", [])
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadInput("capabilities: must be a list of strings")
    return value


def _exclude(body: Mapping[str, Any]) -> list[str]:
    """Job ids the caller cannot run (a hint: skipped for this caller only)."""
    value = body.get("exclude", [])
    if not isinstance(value, list) or len(value) > 1000 or not all(isinstance(x, str) and len(x) <= 128
                                                                  for x in value):
        raise BadInput("exclude: must be a list of at most 1000 job ids")
    return value


def _time(body: Mapping[str, Any], name: str) -> float | None:
    value = _opt_str(body, name, 64)
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise BadInput(f"{name}: {value!r} is not an RFC 3339 time") from exc


# ---------------------------------------------------------------- routes


def _enqueue(r: _Request) -> Response:
    created, view = r.coord.enqueue(r.body)
    return (201 if created else 200), view


def _list(r: _Request) -> Response:
    state = r.query.get("state", [None])[-1]
    text = r.query.get("limit", [None])[-1]
    limit = None
    if text is not None:
        if not text.isdigit() or int(text) > MAX_LIMIT:
            raise BadInput(f"limit: {text[:20]!r} is not a whole number from 0 to {MAX_LIMIT}")
        limit = int(text)
    return 200, r.coord.list_page(state, limit)


def _get(r: _Request) -> Response:
    return 200, r.coord.get_job(r.job_id)


def _claim(r: _Request) -> Response:
    b = r.body
    dry = _flag(b, "dryRun", False) and not r.ignore_dry_run
    view = r.coord.claim(_factory(b), _caps(b), dry_run=dry, request_id=_opt_str(b, "requestId", 256),
                         exclude=_exclude(b))
    return (204, None) if view is None else (200, view)


def _renew(r: _Request) -> Response:
    return 200, r.coord.renew(r.job_id, _factory(r.body), _epoch(r.body))


def _release(r: _Request) -> Response:
    b = r.body
    return 200, r.coord.release(
        r.job_id, _factory(b), _epoch(b), reason=_opt_str(b, "reason") or "", retry=_flag(b, "retry", True),
        count_attempt=_flag(b, "countAttempt", True), not_before=_time(b, "notBefore"),
    )


def _report(r: _Request) -> Response:
    b = r.body
    detail = b.get("detail") or {}
    if not isinstance(detail, dict):
        raise BadInput("detail: must be a JSON object")
    outcome = b.get("outcome")
    if not isinstance(outcome, str):
        raise BadInput("outcome: must be 'shipped' or 'quarantined'")
    return 200, r.coord.report(r.job_id, _factory(b), _epoch(b), outcome, detail)


def _requeue(r: _Request) -> Response:
    return 200, r.coord.requeue(r.job_id)


def _cancel(r: _Request) -> Response:
    return 200, r.coord.cancel(r.job_id)


def _approve(r: _Request) -> Response:
    return 200, r.coord.approve(r.job_id)


def _replan(r: _Request) -> Response:
    """``{spec, planSpent?: {spentS, costUsd}}``: the approved plan, and what its planner ran on the caller's host."""
    spec = r.body.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("children"), list):
        raise BadInput("spec: must be the composite spec of the new plan, with its children")
    if spec.get("id", r.job_id) != r.job_id:
        raise BadInput(f"spec.id: {str(spec.get('id'))[:128]!r} is not the job re-planned, {r.job_id!r}")
    spent = r.body.get("planSpent") or {}
    if not isinstance(spent, dict):
        raise BadInput("planSpent: must be an object {spentS, costUsd}")
    amounts = []
    for key in ("spentS", "costUsd"):
        value = spent.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
            raise BadInput(f"planSpent.{key}: must be a number from 0")
        amounts.append(float(value))
    return 200, r.coord.replan(r.job_id, spec, (amounts[0], amounts[1]))


def _reap(r: _Request) -> Response:
    return 200, {"reclaimed": r.coord.reap()}


def _shadow(r: _Request) -> Response:
    return 202, r.coord.shadow_report(r.body)


def _status(r: _Request) -> Response:
    return 200, r.coord.status()


def _healthz(r: _Request) -> Response:
    r.coord.check_store()  # a database that does not answer: 503 store_unavailable, so a balancer skips us
    return 200, {"ok": True}


_ROUTES: dict[str, dict[str, Callable[[_Request], Response]]] = {
    "jobs": {"POST": _enqueue, "GET": _list},
    "jobs/{id}": {"GET": _get},
    "jobs/{id}/renew": {"POST": _renew},
    "jobs/{id}/release": {"POST": _release},
    "jobs/{id}/report": {"POST": _report},
    "jobs/{id}/requeue": {"POST": _requeue},
    "jobs/{id}/cancel": {"POST": _cancel},
    "jobs/{id}/approve": {"POST": _approve},
    "jobs/{id}/replan": {"POST": _replan},
    "claim": {"POST": _claim},
    "reap": {"POST": _reap},
    "shadow-reports": {"POST": _shadow},
    "status": {"GET": _status},
    "healthz": {"GET": _healthz},
}

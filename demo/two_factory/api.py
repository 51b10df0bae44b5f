"""The fleet API (docs/fleet-api.md) as any client sends it: over the command seam or over HTTP.

The demo does not borrow the product's own client. A dead worker's late
report must be one plain request with a stale epoch, exactly what a delayed
message from that host would be; and the demo should keep working however
the product's modules are arranged. Both transports carry the same requests:
the seam runs `PREFIX METHOD PATH` with the JSON body on stdin and reads one
`{"status", "body"}` line; HTTP sends the bearer token, which never appears
in a message. Transport failures and 5xx answers are retried until a
deadline (every call the demo makes is idempotent at the coordinator); a 4xx
answer is returned as it is, for the caller to judge.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import requests

DEADLINE_S = 10.0


class ApiError(Exception):
    """No trustworthy answer came back, or an answer the caller cannot go on with."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]  # {} for 204

    @property
    def code(self) -> str:
        """The error code of an error answer (`fenced`, `not_leased`...), else ''."""
        err = self.body.get("error")
        return str(err.get("code", "")) if isinstance(err, dict) else ""


class Transport(Protocol):
    def send(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> Answer:
        """One request, one answer; ApiError when nothing trustworthy came back."""
        ...

    def close(self) -> None: ...


def _answer(status: Any, body: Any, where: str) -> Answer:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ApiError(f"{where}: no valid HTTP status in the answer")
    if body is not None and not isinstance(body, dict):
        raise ApiError(f"{where}: the answer's body is not a JSON object")
    return Answer(status, body or {})


class SeamTransport:
    """The command seam: one child per request (`PREFIX METHOD PATH`), killed and reaped on a timeout."""

    def __init__(self, prefix: list[str], env: dict[str, str]) -> None:
        self.prefix = prefix
        self.env = env

    def send(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> Answer:
        where = f"{method} {path} via the command seam"
        data = b"" if body is None else json.dumps(body).encode()
        try:  # run() kills the child on a timeout and on Ctrl-C (its own session: the terminal's SIGINT misses it)
            done = subprocess.run([*self.prefix, method, path], input=data, capture_output=True, env=self.env,
                                  timeout=timeout_s, start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            raise ApiError(f"{where}: no answer within {timeout_s:.3g}s") from None
        except OSError as exc:
            raise ApiError(f"{where}: cannot start {self.prefix[0]!r}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            tail = " ".join(done.stderr.decode(errors="replace").split())[-300:]
            raise ApiError(f"{where}: exited {done.returncode}: {tail}")
        out = done.stdout
        try:
            answer = json.loads(out)
        except ValueError:
            raise ApiError(f"{where}: stdout is not one JSON object") from None
        if not isinstance(answer, dict):
            raise ApiError(f"{where}: stdout is not one JSON object")
        return _answer(answer.get("status"), answer.get("body"), where)

    def close(self) -> None:
        """Nothing to release: every request is its own process."""


class HttpTransport:
    """HTTP with a bearer token; one keep-alive session, so one transport per thread."""

    def __init__(self, base_url: str, token: str | None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url[:80]!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.auth = _bearer(token)  # session-level auth: ~/.netrc can no longer replace it

    def send(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> Answer:
        where = f"{method} {path}"
        try:
            resp = self.session.request(method, self.base_url + path, json=body, timeout=timeout_s,
                                        allow_redirects=False)
        except requests.RequestException as exc:
            raise ApiError(f"{where}: {type(exc).__name__}") from None
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = None
        return _answer(resp.status_code, data if isinstance(data, dict) else None, where)

    def close(self) -> None:
        self.session.close()


def _bearer(token: str) -> Callable[[requests.PreparedRequest], requests.PreparedRequest]:
    def add(req: requests.PreparedRequest) -> requests.PreparedRequest:
        req.headers["Authorization"] = f"Bearer {token}"
        return req

    return add


class Api:
    """The calls the demo makes, on behalf of one party (an observer, or a factory's late report)."""

    def __init__(self, transport: Transport, deadline_s: float = DEADLINE_S) -> None:
        self.transport = transport
        self.deadline_s = deadline_s

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        """The coordinator's answer, whatever its status; retries only what may heal (no answer, 5xx)."""
        deadline = time.monotonic() + self.deadline_s
        delay = 0.25
        while True:
            try:
                answer = self.transport.send(method, path, body, max(0.5, deadline - time.monotonic()))
                if answer.status < 500:
                    return answer
                failure = ApiError(f"{method} {path}: coordinator answered {answer.status} {answer.code}".rstrip(),
                                   answer.status, answer.code)
            except ApiError as exc:
                failure = exc
            if time.monotonic() + delay >= deadline:
                raise failure
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body of a 2xx answer; ApiError naming the status and code otherwise."""
        answer = self.request(method, path, body)
        if not 200 <= answer.status < 300:
            raise ApiError(f"{method} {path}: coordinator answered {answer.status} {answer.code}".rstrip(),
                           answer.status, answer.code)
        return answer.body

    def enqueue(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/v1/fleet/jobs", spec)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's view: `{"job", "meta", "lease"}`."""
        return self.call("GET", f"/v1/fleet/jobs/{quote(job_id, safe='')}")

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/fleet/status")

    def reap(self) -> list[dict[str, Any]]:
        """Run the reaper; the leases it ended, `[{jobId, factoryId, leaseEpoch}]`."""
        reclaimed = self.call("POST", "/v1/fleet/reap", {}).get("reclaimed")
        return [r for r in reclaimed if isinstance(r, dict)] if isinstance(reclaimed, list) else []

    def report(self, job_id: str, factory_id: str, epoch: int, outcome: str, detail: dict[str, Any]) -> Answer:
        """Report a lease's outcome; the raw answer, since a 409 is what a stale epoch must get."""
        body = {"factoryId": factory_id, "leaseEpoch": epoch, "outcome": outcome, "detail": detail}
        return self.request("POST", f"/v1/fleet/jobs/{quote(job_id, safe='')}/report", body)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

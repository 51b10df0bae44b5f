"""The one exception hierarchy of agent-queue and coordinator-stub.

Every error a user can cause or see is one of these. Each carries a stable
snake_case ``code`` (used in the coordinator's JSON errors), the CLI exit code
it maps to, and the HTTP status the coordinator answers with. The CLIs turn
them into exit codes and one-line messages in exactly one place
(``agent_queue.cli.main`` / ``coordinator_stub.cli.main``).
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class AQError(Exception):
    """Base of every expected failure. Unexpected ones are bugs."""

    code = "error"
    exit_code = EXIT_FAILURE
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadInput(AQError):
    """The user gave us something we refuse: a bad job spec, flag or file."""

    code = "bad_input"
    exit_code = EXIT_USAGE
    http_status = 400


class InvalidJob(BadInput):
    """A job spec that fails validation."""

    code = "invalid_job"
    http_status = 422


class TooLarge(BadInput):
    """A request the coordinator refuses for its size (HTTP 413): for the sender, bad input."""

    code = "payload_too_large"
    http_status = 413


class ConfigError(BadInput):
    """agent-queue.toml, an env variable or a flag combination is unusable."""

    code = "config_error"


class NotFound(AQError):
    code = "not_found"
    exit_code = EXIT_USAGE
    http_status = 404


class Conflict(AQError):
    """Same id, different content; or an operation the current state forbids."""

    code = "conflict"
    exit_code = EXIT_USAGE
    http_status = 409


class Fenced(AQError):
    """The caller's lease is not (or no longer) the current one: act on nothing."""

    code = "fenced"
    http_status = 409


class NotLeased(Fenced):
    """The job has no lease at all (queued or terminal)."""

    code = "not_leased"


class ReportPending(AQError):
    """report(shipped) went unanswered: the outcome is unknown, so the job neither ships nor moves yet.

    The job stays in running/ with its ``reportSent`` marker; the fleet source replays the
    report until the coordinator answers (200: resume the ship; 409: fenced).
    """

    code = "report_pending"


class TransportError(AQError):
    """The coordinator could not be reached or answered garbage; retryable."""

    code = "transport_error"
    http_status = 502


class CoordinatorError(AQError):
    """The coordinator answered with an error we do not act on specifically."""

    code = "coordinator_error"

    def __init__(self, message: str, status: int = 500, code: str = "coordinator_error") -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


class Unfinished(AQError):
    """An operation was accepted but the job outran it (a cancel that came after the ship), or it is not
    done yet (a running job whose daemon has not stopped it in time): the CLI says which, exit 1."""

    code = "unfinished"


class StateError(AQError):
    """A state file on disk is unreadable or inconsistent."""

    code = "state_error"


class SchemaMismatch(StateError):
    """The coordinator's database has another schema version than this coordinator-stub knows (exit 1)."""

    code = "schema_mismatch"


class StoreUnavailable(StateError):
    """The coordinator's database did not answer (down, failing over, restarting); retryable (HTTP 503).

    The operation may or may not have committed: a claim is settled by its
    ``requestId``, a report or release by its exact replay, as after any lost answer.
    """

    code = "store_unavailable"
    http_status = 503


class DiskFull(AQError):
    """The factory's disk (or quota) is full: a condition of this host, never the job's failure.

    The runner gives the job back with its attempt not counted and backs off until a write
    succeeds again (``runner``); ``status`` says so.
    """

    code = "disk_full"
    http_status = 507


_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """``exc``, or an error it was raised from, says the disk is full (also a git step's quoted stderr)."""
    codes = {errno.ENOSPC, errno.EDQUOT}
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in codes):
            return True
        if isinstance(exc, AQError) and any(text in exc.message for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False

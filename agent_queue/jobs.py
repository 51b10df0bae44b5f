"""The job spec: one frozen ``Job`` built and validated once, at the edge.

Everything downstream (the local queue, the runner, the coordinator) trusts a
``Job``. ``Job.from_dict`` is the only way in and refuses anything malformed
with an ``InvalidJob`` naming the field; ``Job.to_dict`` gives back the spec,
unknown fields included (forward compatibility with newer coordinators).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent_queue.errors import InvalidJob

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KINDS = ("leaf", "composite")
MAX_PROMPT_BYTES = 8 * 1024 * 1024
MAX_STRING = 64 * 1024
MAX_LIST = 1024
# Used wherever neither the job nor its profile says otherwise (runner and coordinator alike).
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 3

KNOWN_FIELDS = frozenset(
    {
        "id", "kind", "tool", "profile", "prompt", "command", "repo", "base", "verify",
        "ship", "requires", "priority", "budget", "parentId", "dependsOn", "children",
        "phase", "env",
    }
)


@dataclass(frozen=True)
class Budget:
    """Per-job limits; ``None`` means "take it from the profile, else the default"."""

    timeout_s: float | None = None
    max_attempts: int | None = None
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.timeout_s is not None:
            out["timeoutS"] = self.timeout_s
        if self.max_attempts is not None:
            out["maxAttempts"] = self.max_attempts
        if self.cost_usd is not None:
            out["costUsd"] = self.cost_usd
        return out


@dataclass(frozen=True)
class Job:
    id: str
    kind: str = "leaf"
    tool: str = "shell"
    profile: str = "default"
    prompt: str | None = None
    command: tuple[str, ...] = ()
    repo: str | None = None
    base: str | None = None
    verify: tuple[str, ...] = ()
    ship: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    priority: int = 0
    budget: Budget = field(default_factory=Budget)
    parent_id: str | None = None
    depends_on: tuple[str, ...] = ()
    children: tuple[Job, ...] = ()
    phase: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "job") -> Job:
        """Validate a decoded JSON job spec; raise ``InvalidJob`` naming the bad field."""
        return _parse_job(data, where)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update({"id": self.id, "kind": self.kind, "tool": self.tool, "profile": self.profile})
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.command:
            out["command"] = list(self.command)
        if self.repo is not None:
            out["repo"] = self.repo
        if self.base is not None:
            out["base"] = self.base
        if self.verify:
            out["verify"] = list(self.verify)
        if self.ship:
            out["ship"] = list(self.ship)
        out["requires"] = list(self.requires)
        out["priority"] = self.priority
        out["budget"] = self.budget.to_dict()
        out["parentId"] = self.parent_id
        out["dependsOn"] = list(self.depends_on)
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        if self.phase is not None:
            out["phase"] = self.phase
        if self.env:
            out["env"] = dict(self.env)
        return out

    def with_id(self, job_id: str) -> Job:
        return replace(self, id=validate_id(job_id, "id"))


def new_job_id(prefix: str = "job") -> str:
    """A sortable, unique id: UTC time to the microsecond plus randomness."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int((now % 1) * 1_000_000)
    return f"{prefix}-{stamp}{micros:06d}-{secrets.token_hex(3)}"


def validate_id(value: Any, where: str) -> str:
    """Ids become file and branch names: never a path, never a surprise."""
    if not isinstance(value, str):
        raise InvalidJob(f"{where}: must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidJob(f"{where}: must not be empty")
    if len(value) > 128:
        raise InvalidJob(f"{where}: {len(value)} characters, at most 128 allowed")
    if ".." in value or not ID_RE.fullmatch(value):
        raise InvalidJob(
            f"{where}: {value[:40]!r} is not a valid id "
            "(letters, digits, '.', '_', '-'; starts with a letter or digit; no '/', '..' or spaces)"
        )
    return value


def _parse_job(data: Any, where: str) -> Job:
    if not isinstance(data, Mapping):
        raise InvalidJob(f"{where}: a job spec must be a JSON object, got {_type(data)}")
    if "id" not in data:
        raise InvalidJob(f"{where}: missing required field 'id'")
    job_id = validate_id(data["id"], f"{where}.id")
    w = f"job {job_id}"
    kind = _choice(data.get("kind", "leaf"), KINDS, f"{w}.kind")
    tool = _name(data.get("tool", "shell"), f"{w}.tool")
    profile = _name(data.get("profile", "default"), f"{w}.profile")
    prompt = _opt_str(data.get("prompt"), f"{w}.prompt", MAX_PROMPT_BYTES)
    command = _argv(data.get("command"), f"{w}.command")
    verify = _argv(data.get("verify"), f"{w}.verify")
    ship = _argv(data.get("ship"), f"{w}.ship")
    children = _children(data.get("children"), kind, w, planned=data.get("plan") is not None)
    if kind == "leaf":
        if tool == "shell" and not command:
            raise InvalidJob(f"{w}.command: tool 'shell' needs a non-empty argv list")
        if tool != "shell" and prompt is None:
            raise InvalidJob(f"{w}.prompt: tool {tool!r} needs a prompt")
    return Job(
        id=job_id,
        kind=kind,
        tool=tool,
        profile=profile,
        prompt=prompt,
        command=command,
        repo=_opt_str(data.get("repo"), f"{w}.repo", 4096, allow_empty=False),
        base=_opt_str(data.get("base"), f"{w}.base", 256, allow_empty=False),
        verify=verify,
        ship=ship,
        requires=_each(_name, data.get("requires"), f"{w}.requires"),
        priority=_int(data.get("priority", 0), f"{w}.priority", -1_000_000, 1_000_000),
        budget=_budget(data.get("budget"), f"{w}.budget"),
        parent_id=None if data.get("parentId") is None else validate_id(data["parentId"], f"{w}.parentId"),
        depends_on=_each(validate_id, data.get("dependsOn"), f"{w}.dependsOn"),
        children=children,
        phase=None if data.get("phase") is None else _int(data["phase"], f"{w}.phase", 0, 1000),
        env=_env(data.get("env"), f"{w}.env"),
        extra={k: v for k, v in data.items() if k not in KNOWN_FIELDS},
    )


def _type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise InvalidJob(f"{where}: contains a NUL character")


def _opt_str(value: Any, where: str, limit: int, allow_empty: bool = True) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"{where}: must be a string, got {_type(value)}")
    if not allow_empty and not value:
        raise InvalidJob(f"{where}: must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidJob(f"{where}: longer than {limit} bytes")
    _check_text(value, where)
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidJob(f"{where}: {str(value)[:40]!r} is not a valid name ([A-Za-z0-9._-], 1-64 chars)")
    return value


def _choice(value: Any, allowed: Sequence[str], where: str) -> str:
    if value not in allowed:
        raise InvalidJob(f"{where}: {str(value)[:40]!r} is not one of {', '.join(allowed)}")
    return str(value)


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidJob(f"{where}: must be a list, got {_type(value)}")
    if len(value) > MAX_LIST:
        raise InvalidJob(f"{where}: more than {MAX_LIST} items")
    return value


def _each(check: Callable[[Any, str], str], value: Any, where: str) -> tuple[str, ...]:
    return tuple(check(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where)))


def _argv(value: Any, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidJob(f"{where}[{i}]: argv items must be strings, got {_type(item)}")
        if len(item) > MAX_STRING * 16:
            raise InvalidJob(f"{where}[{i}]: longer than {MAX_STRING * 16} characters")
        _check_text(item, f"{where}[{i}]")
        out.append(item)
    if items and not out[0]:
        raise InvalidJob(f"{where}[0]: the program name must not be empty")
    return tuple(out)


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"{where}: must be an integer, got {_type(value)}")
    if not lo <= value <= hi:
        raise InvalidJob(f"{where}: {value} is out of range [{lo}, {hi}]")
    return value


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJob(f"{where}: must be a number, got {_type(value)}")
    if not (lo < value <= hi):  # also refuses NaN
        raise InvalidJob(f"{where}: {value} is out of range ({lo}, {hi}]")
    return float(value)


def _budget(value: Any, where: str) -> Budget:
    if value is None:
        return Budget()
    if not isinstance(value, Mapping):
        raise InvalidJob(f"{where}: must be an object, got {_type(value)}")
    t, m, c = value.get("timeoutS"), value.get("maxAttempts"), value.get("costUsd")
    return Budget(
        timeout_s=None if t is None else _number(t, f"{where}.timeoutS", 0, 7 * 86400),
        max_attempts=None if m is None else _int(m, f"{where}.maxAttempts", 1, 1000),
        cost_usd=None if c is None else _number(c, f"{where}.costUsd", -1e-12, 1e6),
    )


def _env(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidJob(f"{where}: must be an object of strings")
    out = []
    for k, v in value.items():
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", k):
            raise InvalidJob(f"{where}.{str(k)[:40]}: env names are [A-Za-z_][A-Za-z0-9_]*, values strings")
        _check_text(v, f"{where}.{k}")
        out.append((k, v))
    return tuple(sorted(out))


def _children(value: Any, kind: str, where: str, planned: bool = False) -> tuple[Job, ...]:
    """A composite's children; none when it carries a ``plan`` instead (a planner writes them)."""
    items = _list(value, f"{where}.children")
    if kind == "leaf":
        if items:
            raise InvalidJob(f"{where}.children: only a composite job has children")
        return ()
    if planned and items:
        raise InvalidJob(f"{where}: give either children or a plan, not both")
    if not items and not planned:
        raise InvalidJob(f"{where}.children: a composite job needs at least one child (or a plan)")
    parent = where.split(" ", 1)[1]
    children = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("kind", "leaf") != "leaf":
            raise InvalidJob(f"{where}.children[{i}]: children must be leaf jobs")
        child = _parse_job(item, f"{where}.children[{i}]")
        children.append(replace(child, parent_id=parent))
    return tuple(children)



@dataclass(frozen=True)
class Lease:
    """The right of one factory to work on one job until ``expires_at`` (epoch seconds).

    ``epoch`` is the fencing token: every successful claim of a job bumps it,
    and every renew / release / report must present the current one.
    """

    job_id: str
    factory_id: str
    epoch: int
    expires_at: float
    ttl_s: float

    def to_dict(self) -> dict[str, Any]:
        from agent_queue.timeutil import to_rfc3339

        return {
            "jobId": self.job_id,
            "factoryId": self.factory_id,
            "leaseEpoch": self.epoch,
            "expiresAt": to_rfc3339(self.expires_at),
            "ttlS": self.ttl_s,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Lease:
        from agent_queue.timeutil import parse_rfc3339

        try:
            return cls(
                job_id=validate_id(data["jobId"], "lease.jobId"),
                factory_id=str(data["factoryId"]),
                epoch=int(data["leaseEpoch"]),
                expires_at=parse_rfc3339(str(data["expiresAt"])),
                ttl_s=float(data["ttlS"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidJob(f"lease: malformed ({exc})") from exc

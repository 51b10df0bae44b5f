"""The demo's knobs, read once from the environment into one frozen object (demo/README.md lists them)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field


class DemoError(Exception):
    """A setup problem (bad knob, a process that would not start): exit 2, no verdict."""


@dataclass(frozen=True)
class Knobs:
    jobs: int
    lease_ttl_s: float
    job_seconds: float
    keep: bool
    verbose: bool
    stub_cmd: list[str] | None  # test seam: a coordinator-stub look-alike (see README)
    api: str | None
    token: str | None = field(repr=False)
    state: str | None = field(default=None, repr=False)  # AQ_DEMO_STATE: a postgresql:// URL (may hold a password)
    enroll: bool = False  # AQ_DEMO_ENROLL=1: one serve, a token per factory (coordinators.EnrolledServe)

    @property
    def live(self) -> bool:
        return bool(self.api and self.token)


def read_knobs(env: Mapping[str, str]) -> Knobs:
    def number(name: str, default: float, lo: float, hi: float) -> float:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise DemoError(f"{name}={raw[:40]!r}: not a number") from None
        if not lo <= value <= hi:
            raise DemoError(f"{name}={value:g}: out of range [{lo:g}, {hi:g}]")
        return value

    stub_cmd = env.get("AQ_DEMO_STUB_CMD", "").strip()
    try:
        stub_argv = shlex.split(stub_cmd) if stub_cmd else None
    except ValueError as exc:
        raise DemoError(f"AQ_DEMO_STUB_CMD: cannot split like a shell ({exc})") from None
    state = env.get("AQ_DEMO_STATE", "").strip() or None
    if state is not None and not state.startswith(("postgresql://", "postgres://")):
        raise DemoError("AQ_DEMO_STATE: must be a postgresql:// URL (the stub mode's state is a temp dir)")
    enroll = env.get("AQ_DEMO_ENROLL", "") == "1"
    if enroll and (state is not None or env.get("AQ_FLEET_API")):
        raise DemoError("AQ_DEMO_ENROLL=1: runs its own serve on a temp dir; not with AQ_DEMO_STATE or AQ_FLEET_API")
    return Knobs(
        jobs=int(number("AQ_DEMO_JOBS", 3, 2, 20)),
        lease_ttl_s=number("AQ_DEMO_LEASE_TTL_S", 3.0, 1.0, 120.0),
        job_seconds=number("AQ_DEMO_JOB_SECONDS", 2.0, 0.5, 120.0),
        keep=env.get("AQ_DEMO_KEEP", "") == "1",
        verbose=env.get("AQ_DEMO_VERBOSE", "") == "1",
        stub_cmd=stub_argv,
        api=env.get("AQ_FLEET_API") or None,
        token=env.get("AQ_FLEET_TOKEN") or None,
        state=state,
        enroll=enroll,
    )

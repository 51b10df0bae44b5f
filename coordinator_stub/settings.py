"""Settings of one coordinator-stub process, read once at start-up from flags and the environment.

Flags win over the environment: ``--state`` over ``AQ_STUB_STATE``,
``--lease-ttl`` over ``AQ_STUB_LEASE_TTL_S`` (default 60 s). The bearer token
(``AQ_FLEET_TOKEN``) is kept out of ``repr`` so it can never reach a log.

The state is a directory (the file store) or a ``postgresql://`` URL (the
PostgreSQL store, ``database_url``); a URL's password is shown only redacted.
"""

from __future__ import annotations

from agent_queue.errors import ConfigError

TYPE_CHECKING = False  # typing and dataclasses stay unimported on the seam's per-call path
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_TTL_S = 60.0
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(state: str) -> bool:
    return state.startswith(DATABASE_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (userinfo and a ``password=`` parameter): safe to print."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    base, q, query = rest.partition("?")
    if q:
        query = "&".join("password=***" if part.lower().startswith("password=") else part
                         for part in query.split("&"))
    return f"{scheme}{sep}{base}{q}{query}"


class StubSettings:
    """Immutable settings (a plain class: dataclasses costs milliseconds the seam cannot spare)."""

    __slots__ = ("state_dir", "lease_ttl_s", "ignore_dry_run", "token", "database_url")
    state_dir: str  # a str, not a Path: pathlib's import is ~3.5 ms of each seam call (B1)
    lease_ttl_s: float
    ignore_dry_run: bool
    token: str | None
    database_url: str | None  # set when the state is a PostgreSQL URL (state_dir is then meaningless)

    def __init__(self, state_dir: str, lease_ttl_s: float = DEFAULT_TTL_S, ignore_dry_run: bool = False,
                 token: str | None = None, database_url: str | None = None) -> None:
        values = (state_dir, lease_ttl_s, ignore_dry_run, token, database_url)
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"StubSettings is immutable ({name})")

    def __repr__(self) -> str:  # never the token, never a database password
        where = (f"database_url={redact_url(self.database_url)!r}" if self.database_url
                 else f"state_dir={str(self.state_dir)!r}")
        return (f"StubSettings({where}, lease_ttl_s={self.lease_ttl_s}, "
                f"ignore_dry_run={self.ignore_dry_run}, token={'set' if self.token else 'unset'})")


def load_settings(
    env: Mapping[str, str], state: str | None = None, lease_ttl: str | float | None = None,
    ignore_dry_run: bool = False,
) -> StubSettings:
    """Resolve flags and env into one ``StubSettings``; a ``ConfigError`` names the bad setting."""
    state = state or env.get("AQ_STUB_STATE")
    if not state:
        raise ConfigError("state dir: pass --state DIR or set AQ_STUB_STATE")
    ttl_text = lease_ttl if lease_ttl is not None else env.get("AQ_STUB_LEASE_TTL_S")
    where = "--lease-ttl" if lease_ttl is not None else "AQ_STUB_LEASE_TTL_S"
    ttl = DEFAULT_TTL_S
    if ttl_text is not None and ttl_text != "":
        try:
            ttl = float(ttl_text)
        except ValueError:
            raise ConfigError(f"{where}: {str(ttl_text)[:40]!r} is not a number of seconds") from None
        if not 0 < ttl < float("inf"):  # also NaN (not math.isfinite: its import is ~0.3 ms of each seam call)
            raise ConfigError(f"{where}: must be a positive number of seconds, got {ttl_text}")
    url = state if is_database_url(state) else None
    return StubSettings(state, ttl, ignore_dry_run, env.get("AQ_FLEET_TOKEN") or None, url)

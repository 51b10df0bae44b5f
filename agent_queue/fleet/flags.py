"""The three fleet flags (AQ_FLEET, AQ_FLEET_ROUTE, AQ_FLEET_SHADOW) and their precedence.

This is the one place that decides whether a factory talks to a coordinator at
all, who sources work, and whether shadow mode runs. ``settings.py`` reads the
three values once at start-up (env, ``agent-queue.toml``, run flags), overlays
them with :meth:`FleetFlags.overlay` (run flag > env > toml) and calls
:meth:`FleetFlags.resolve`; the runner, ``status``, ``fleet-status`` and the
daemon's start-up log line then only read the frozen :class:`ResolvedFlags`.

Precedence, kept exactly from the bash runner:

* ``fleet`` off (the default): pure offline, route and shadow are both off.
* ``fleet`` on: ``route`` defaults to on (coordinator authoritative for claims).
* ``shadow`` only runs with fleet on and route off. Route on + shadow on: route
  wins, one warning per process. Shadow on + fleet off: shadow is off, one
  warning per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_queue.errors import ConfigError

ENV_FLEET = "AQ_FLEET"
ENV_ROUTE = "AQ_FLEET_ROUTE"
ENV_SHADOW = "AQ_FLEET_SHADOW"

# agent-queue.toml:  [fleet]  enabled = true  route = false  shadow = true
TOML_KEYS = {"fleet": "enabled", "route": "route", "shadow": "shadow"}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_ACCEPTED = "1/0, true/false, yes/no, on/off"

WARN_ROUTE_WINS = "route_wins_over_shadow"
WARN_SHADOW_NEEDS_FLEET = "shadow_needs_fleet"
_MESSAGES = {
    WARN_ROUTE_WINS: (
        f"{ENV_ROUTE}=1 and {ENV_SHADOW}=1: route wins, shadow mode is off "
        f"(shadow needs {ENV_FLEET}=1 {ENV_ROUTE}=0)"
    ),
    WARN_SHADOW_NEEDS_FLEET: (
        f"{ENV_SHADOW}=1 with {ENV_FLEET}=0: shadow mode is off (it needs {ENV_FLEET}=1 {ENV_ROUTE}=0)"
    ),
}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def parse_bool(name: str, value: Any) -> bool:
    """Parse a flag value from env (a string) or TOML (a bool, or the integer 0/1).

    Accepts 1/0, true/false, yes/no, on/off, case-insensitively and ignoring
    surrounding blanks. Anything else, the empty string included, is refused
    with a ``ConfigError`` naming ``name`` (the variable, key or option), so a
    typo never silently selects a mode.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        shown = repr(value[:40]) if value else "empty"
        raise ConfigError(f"{name}: {shown} is not a boolean (use {_ACCEPTED})")
    raise ConfigError(f"{name}: {type(value).__name__} {str(value)[:40]!r} is not a boolean (use {_ACCEPTED})")


def warn_once(key: str, message: str, warn: Callable[[str], None]) -> bool:
    """Call ``warn(message)`` the first time ``key`` is seen in this process; True if it did."""
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    warn(message)
    return True


def reset_warnings() -> None:
    """Forget which one-shot warnings were given (tests only)."""
    with _warned_lock:
        _warned.clear()


def _on_off(value: bool) -> str:
    return "1" if value else "0"


@dataclass(frozen=True)
class FleetFlags:
    """What the user asked for; ``None`` means "not said here" (a default or a lower source applies)."""

    fleet: bool | None = None
    route: bool | None = None
    shadow: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FleetFlags:
        """Read the three AQ_* variables from ``env`` (a set-but-empty variable is an error)."""
        return cls(
            fleet=_opt(ENV_FLEET, env.get(ENV_FLEET)),
            route=_opt(ENV_ROUTE, env.get(ENV_ROUTE)),
            shadow=_opt(ENV_SHADOW, env.get(ENV_SHADOW)),
        )

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], where: str = "agent-queue.toml [fleet]") -> FleetFlags:
        """Read ``enabled``, ``route`` and ``shadow`` from the ``[fleet]`` table; other keys are not ours."""
        return cls(
            fleet=_opt(f"{where} {TOML_KEYS['fleet']}", table.get(TOML_KEYS["fleet"])),
            route=_opt(f"{where} {TOML_KEYS['route']}", table.get(TOML_KEYS["route"])),
            shadow=_opt(f"{where} {TOML_KEYS['shadow']}", table.get(TOML_KEYS["shadow"])),
        )

    def overlay(self, higher: FleetFlags) -> FleetFlags:
        """These flags with every value that ``higher`` sets taking precedence."""
        return FleetFlags(
            fleet=self.fleet if higher.fleet is None else higher.fleet,
            route=self.route if higher.route is None else higher.route,
            shadow=self.shadow if higher.shadow is None else higher.shadow,
        )

    def resolve(self, warn: Callable[[str], None]) -> ResolvedFlags:
        return resolve_flags(self.fleet, self.route, self.shadow, warn)

    def describe(self) -> str:
        parts = [f"{n}={'-' if v is None else _on_off(v)}" for n, v in self._items()]
        return " ".join(parts)

    def _items(self) -> tuple[tuple[str, bool | None], ...]:
        return (("fleet", self.fleet), ("route", self.route), ("shadow", self.shadow))


@dataclass(frozen=True)
class ResolvedFlags:
    """The effective mode after defaults and precedence; what the daemon acts on."""

    fleet: bool
    route: bool
    shadow: bool
    warnings: tuple[str, ...] = ()

    @property
    def coordinator_sources_work(self) -> bool:
        """True when claims come from the coordinator instead of the local inbox."""
        return self.fleet and self.route

    def describe(self) -> str:
        """Short form for ``status``, ``fleet-status`` and the start-up log line."""
        return f"fleet={_on_off(self.fleet)} route={_on_off(self.route)} shadow={_on_off(self.shadow)}"

    def to_dict(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "route": self.route, "shadow": self.shadow, "warnings": list(self.warnings)}


OFFLINE = ResolvedFlags(fleet=False, route=False, shadow=False)


def resolve_flags(
    fleet: bool | None, route: bool | None, shadow: bool | None, warn: Callable[[str], None] | None
) -> ResolvedFlags:
    """Apply defaults and precedence; give each precedence warning at most once per process
    (``warn=None``: resolve only, warn nothing and mark nothing as warned).

    ``warnings`` on the result lists every rule that applied, even when its
    warning was already given, so ``status`` can show it every time.
    """
    fleet_on = bool(fleet)
    shadow_asked = bool(shadow)
    if not fleet_on:
        if not shadow_asked:
            return OFFLINE
        return ResolvedFlags(False, False, False, (_warn(WARN_SHADOW_NEEDS_FLEET, warn),))
    route_on = True if route is None else route
    if route_on and shadow_asked:
        return ResolvedFlags(True, True, False, (_warn(WARN_ROUTE_WINS, warn),))
    return ResolvedFlags(True, route_on, shadow_asked and not route_on)


def _warn(key: str, warn: Callable[[str], None] | None) -> str:
    message = _MESSAGES[key]
    if warn is not None:
        warn_once(key, message, warn)
    return message


def _opt(name: str, value: Any) -> bool | None:
    return None if value is None else parse_bool(name, value)

"""Settings: read flags, AQ_* env, agent-queue.toml and defaults once, into one frozen object.

Precedence is flag > env > config file > default, for every field. Nothing
else in the package reads ``os.environ``: the CLI builds a ``Settings`` at
start-up and passes it down. ``host_env`` is the snapshot of the few host
variables a tool may ever see (minimal set + declared pass-through, never
AQ_*). The fleet token is kept out of ``repr`` and redacted in ``describe``.
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent_queue.adapters import AgentAdapter
from agent_queue.errors import ConfigError
from agent_queue.fleet.flags import ResolvedFlags, parse_bool, resolve_flags
from agent_queue.logpump import DEFAULT_LOG_CAP
from agent_queue.tools import Profile, configured_tools, host_env, parse_profiles, parse_tools

CONFIG_NAME = "agent-queue.toml"
LOG_FORMATS = ("text", "json")
REDACTED = "<redacted>"
MIN_POLL_S = 0.05  # a 0 poll would spin a core while idle
_TOP_KEYS = {"factory_id", "capabilities", "log_format", "poll_s", "grace_s", "tools", "profiles", "fleet",
             "keep_worktrees_days", "allowed_repos", "log_cap"}
MIN_LOG_CAP = 4096
_SIZE_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
# [fleet] key -> (Settings field, env variable)
_FLEET_KEYS = {
    "enabled": ("fleet", "AQ_FLEET"),
    "route": ("fleet_route", "AQ_FLEET_ROUTE"),
    "shadow": ("fleet_shadow", "AQ_FLEET_SHADOW"),
    "api_cmd": ("fleet_api_cmd", "AQ_FLEET_API_CMD"),
    "api": ("fleet_api", "AQ_FLEET_API"),
    "token": ("fleet_token", "AQ_FLEET_TOKEN"),
}
_BOOL_FIELDS = {"fleet", "fleet_route", "fleet_shadow"}


@dataclass(frozen=True)
class Settings:
    root: Path
    factory_id: str
    config_path: Path | None = None
    log_format: str = "text"
    verbose: bool = False
    poll_s: float = 2.0
    grace_s: float = 30.0
    capabilities: tuple[str, ...] = ()
    tools: Mapping[str, AgentAdapter] = field(default_factory=lambda: parse_tools(None, "tools"))
    configured_tools: tuple[str, ...] = ()  # named in [tools.*] of the config: doctor requires them
    keep_worktrees_days: float = 7.0  # worktrees of finished jobs are pruned after this long
    log_cap: int = DEFAULT_LOG_CAP  # bytes of a job's log (the middle of a flood is cut; see logpump)
    # Repos (path or URL prefixes) a job may name; empty: any repo this daemon's user can read.
    allowed_repos: tuple[str, ...] = ()
    profiles: Mapping[str, Profile] = field(default_factory=lambda: parse_profiles(None, "profiles"))
    host_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    fleet: bool = False
    fleet_route: bool = True
    fleet_shadow: bool = False
    fleet_api_cmd: str | None = None
    fleet_api: str | None = None
    fleet_token: str | None = field(default=None, repr=False)
    shadow_log_idle: bool = False  # run --shadow-log-idle: also log IDLE shadow verdicts

    @property
    def fleet_flags(self) -> ResolvedFlags:
        """The three fleet flags after precedence; the daemon prints their warnings, once, at start-up."""
        return resolve_flags(self.fleet, self.fleet_route, self.fleet_shadow, None)

    @property
    def fleet_mode(self) -> str:
        """offline | route | local | shadow."""
        flags = self.fleet_flags
        if not flags.fleet:
            return "offline"
        return "route" if flags.route else "shadow" if flags.shadow else "local"

    def describe(self) -> dict[str, Any]:
        """What `status` shows: every resolved setting, secrets redacted."""
        return {
            "root": str(self.root),
            "factoryId": self.factory_id,
            "config": None if self.config_path is None else str(self.config_path),
            "logFormat": self.log_format,
            "pollS": self.poll_s,
            "graceS": self.grace_s,
            "capabilities": list(self.capabilities),
            "tools": sorted(self.tools),
            "profiles": sorted(self.profiles),
            "keepWorktreesDays": self.keep_worktrees_days,
            "logCapBytes": self.log_cap,
            "allowedRepos": list(self.allowed_repos) or "any",
            "fleet": self.fleet,
            "fleetRoute": self.fleet_route,
            "fleetShadow": self.fleet_shadow,
            "fleetMode": self.fleet_mode,
            "fleetApiCmd": self.fleet_api_cmd,
            "fleetApi": None if self.fleet_api is None else redact_url(self.fleet_api),
            "fleetToken": None if self.fleet_token is None else REDACTED,
        }


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build the one Settings object; ``flags`` holds CLI values, None where not given."""
    root = Path(_pick(flags.get("root"), env.get("AQ_ROOT"), None, "~/.agent-queue")).expanduser()
    if root.exists() and not root.is_dir():  # the same answer whichever way it was given
        source = "--root" if flags.get("root") is not None else "AQ_ROOT" if env.get("AQ_ROOT") else "root"
        raise ConfigError(f"{source} {root}: is not a directory")
    config_path = _config_path(flags.get("config"), env.get("AQ_CONFIG"), root)
    cfg = _read_config(config_path)
    where = str(config_path)
    fleet_cfg = _fleet_table(cfg.get("fleet"), f"{where}: [fleet]")
    tools = parse_tools(cfg.get("tools"), f"{where}: tools")
    values: dict[str, Any] = {}
    for key, (name, var) in _FLEET_KEYS.items():
        raw = _pick(flags.get(name), env.get(var), fleet_cfg.get(key), None)
        if raw is not None:
            values[name] = parse_bool(var, raw) if name in _BOOL_FIELDS else _nonempty(raw, var)
    return Settings(
        root=root,
        factory_id=_factory_id(_pick(flags.get("factory_id"), env.get("AQ_FACTORY_ID"), cfg.get("factory_id"),
                                     short_hostname())),
        config_path=config_path,
        log_format=_log_format(_pick(flags.get("log_format"), env.get("AQ_LOG_FORMAT"), cfg.get("log_format"),
                                     "text")),
        verbose=bool(flags.get("verbose")),
        poll_s=max(MIN_POLL_S, _seconds(_pick(flags.get("poll_s"), None, cfg.get("poll_s"), 2.0), "poll_s")),
        grace_s=_seconds(_pick(flags.get("grace_s"), None, cfg.get("grace_s"), 30.0), "grace_s"),
        capabilities=_capabilities(env.get("AQ_CAPABILITIES"), cfg.get("capabilities"), where),
        allowed_repos=_string_list(cfg.get("allowed_repos"), f"config file {where}: allowed_repos"),
        tools=tools,
        configured_tools=configured_tools(cfg.get("tools")),
        keep_worktrees_days=_days(_pick(flags.get("keep_worktrees_days"), None, cfg.get("keep_worktrees_days"), 7.0)),
        log_cap=_size(_pick(None, env.get("AQ_LOG_CAP"), cfg.get("log_cap"), DEFAULT_LOG_CAP), "AQ_LOG_CAP / log_cap"),
        profiles=parse_profiles(cfg.get("profiles"), f"{where}: profiles"),
        host_env=host_env(env, tools),
        shadow_log_idle=bool(flags.get("shadow_log_idle")),
        **values,
    )


def short_hostname() -> str:
    return socket.gethostname().split(".", 1)[0] or "localhost"


def redact_url(url: str) -> str:
    """Drop user:password from a URL before it is shown anywhere."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redact_spec(spec: Mapping[str, Any], secrets: Iterable[str | None] = ()) -> dict[str, Any]:
    """A job spec fit to show: env values and URL credentials hidden, and any known secret (the fleet
    token) replaced wherever it appears, at any depth."""
    known = [s for s in secrets if s]

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for secret in known:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, Mapping):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    def hide(job: dict[str, Any]) -> dict[str, Any]:
        if isinstance(job.get("env"), Mapping):
            job["env"] = dict.fromkeys(job["env"], REDACTED)
        if isinstance(job.get("repo"), str):
            job["repo"] = redact_url(job["repo"])
        if isinstance(job.get("children"), list):
            job["children"] = [hide(c) if isinstance(c, dict) else c for c in job["children"]]
        return job

    return hide(scrub(spec))


def _pick(flag: Any, env_value: str | None, cfg_value: Any, default: Any) -> Any:
    for value in (flag, env_value, cfg_value):
        if value is not None:
            return value
    return default


def _config_path(flag: str | None, env_value: str | None, root: Path) -> Path | None:
    explicit = flag if flag is not None else env_value
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        return path
    default = root / CONFIG_NAME
    return default if default.is_file() else None


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            cfg = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    return cfg


def _fleet_table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(value) - set(_FLEET_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_FLEET_KEYS))})")
    return value


def _nonempty(value: Any, name: str) -> str:
    text = str(value)
    if not text.strip():
        raise ConfigError(f"{name}: must not be empty")
    return text


def _log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"AQ_LOG_FORMAT / --log-format: {str(value)[:40]!r} is not one of text, json")
    return str(value)


def _factory_id(value: Any) -> str:
    """It names this host in leases, commit trailers and `<id>-shadow`: the coordinator's id rules apply."""
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,118}", text):
        raise ConfigError(f"factory id {text[:40]!r}: use letters, digits, '.', '_', '-' (at most 119 characters)")
    return text


def _number(value: Any, name: str, unit: str, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {str(value)[:40]!r} is not a number of {unit}") from None
    if not 0 <= number <= high:  # also refuses NaN
        raise ConfigError(f"{name}: {number:g} is out of range [0, {high:g}]")
    return number


def _seconds(value: Any, name: str) -> float:
    return _number(value, name, "seconds", 86400)


def _capabilities(env_value: str | None, cfg_value: Any, where: str) -> tuple[str, ...]:
    if env_value is not None:
        return tuple(c.strip() for c in env_value.split(",") if c.strip())
    return _string_list(cfg_value, f"config file {where}: capabilities")


def _string_list(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise ConfigError(f"{name} must be a list of non-empty strings")
    return tuple(value)


def _size(value: Any, name: str) -> int:
    """Bytes: an integer, or a number with K/M/G (KiB/MiB/GiB, any case): ``65536``, ``"64M"``, ``"1GiB"``."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value)) if not isinstance(value, bool) else None
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ConfigError(f"{name}: {str(value)[:40]!r} is not a size (bytes, or a number with K, M or G)")
    size = int(match.group(1)) * unit
    if not MIN_LOG_CAP <= size <= 1 << 40:
        raise ConfigError(f"{name}: {size} bytes is out of range [{MIN_LOG_CAP}, {1 << 40}]")
    return size


def _days(value: Any) -> float:
    return _number(value, "keep_worktrees_days / --keep-worktrees", "days", 3650)

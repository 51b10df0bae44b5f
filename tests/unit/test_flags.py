"""The fleet flag model: parsing, defaults, precedence and the once-per-process warnings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent_queue.errors import ConfigError
from agent_queue.fleet.flags import (
    ENV_SHADOW,
    FleetFlags,
    ResolvedFlags,
    parse_bool,
    reset_warnings,
    resolve_flags,
    warn_once,
)


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    reset_warnings()
    yield
    reset_warnings()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True), ("0", False), ("true", True), ("FALSE", False), ("Yes", True), ("no", False),
        ("on", True), ("OFF", False), (" 1 ", True), (True, True), (False, False), (1, True), (0, False),
    ],
)
def test_parse_bool_accepts_the_documented_words(value: object, expected: bool) -> None:
    assert parse_bool("AQ_FLEET", value) is expected


@pytest.mark.parametrize("value", ["", "  ", "2", "y", "enabled", "truee", "-1", 2, 1.0, None, [1]])
def test_parse_bool_refuses_anything_else_naming_the_variable(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bool("AQ_FLEET_ROUTE", value)
    assert str(info.value).startswith("AQ_FLEET_ROUTE: ")
    assert "1/0, true/false, yes/no, on/off" in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_value_is_named_empty() -> None:
    with pytest.raises(ConfigError, match="AQ_FLEET: empty is not a boolean"):
        parse_bool("AQ_FLEET", "")


def test_default_is_pure_offline() -> None:
    seen: list[str] = []
    flags = resolve_flags(None, None, None, seen.append)
    assert (flags.fleet, flags.route, flags.shadow) == (False, False, False)
    assert not flags.coordinator_sources_work
    assert flags.describe() == "fleet=0 route=0 shadow=0"
    assert seen == []


def test_fleet_on_defaults_to_route() -> None:
    flags = resolve_flags(True, None, None, lambda m: None)
    assert (flags.fleet, flags.route, flags.shadow) == (True, True, False)
    assert flags.coordinator_sources_work


def test_route_off_keeps_the_local_inbox_authoritative() -> None:
    flags = resolve_flags(True, False, None, lambda m: None)
    assert (flags.fleet, flags.route, flags.shadow) == (True, False, False)
    assert not flags.coordinator_sources_work


def test_shadow_runs_with_fleet_on_and_route_off() -> None:
    seen: list[str] = []
    flags = resolve_flags(True, False, True, seen.append)
    assert flags.describe() == "fleet=1 route=0 shadow=1"
    assert flags.warnings == ()
    assert seen == []


@pytest.mark.parametrize("route", [True, None])
def test_route_wins_over_shadow_warned_once_per_process(route: bool | None) -> None:
    seen: list[str] = []
    results = [resolve_flags(True, route, True, seen.append) for _ in range(50)]
    assert all(r.describe() == "fleet=1 route=1 shadow=0" for r in results)
    assert len(seen) == 1
    assert "route wins" in seen[0]
    # status keeps showing why shadow is off, even after the one warning
    assert all(r.warnings == (seen[0],) for r in results)


def test_shadow_without_fleet_is_off_and_warned_once() -> None:
    seen: list[str] = []
    results = [resolve_flags(False, False, True, seen.append) for _ in range(20)]
    assert all((r.fleet, r.route, r.shadow) == (False, False, False) for r in results)
    assert len(seen) == 1
    assert "AQ_FLEET=0" in seen[0] and "shadow mode is off" in seen[0]


def test_the_two_warnings_are_independent() -> None:
    seen: list[str] = []
    resolve_flags(False, None, True, seen.append)
    resolve_flags(True, True, True, seen.append)
    resolve_flags(False, None, True, seen.append)
    resolve_flags(True, True, True, seen.append)
    assert len(seen) == 2 and seen[0] != seen[1]


def test_warn_once_and_reset() -> None:
    seen: list[str] = []
    assert warn_once("k", "m", seen.append) is True
    assert warn_once("k", "m", seen.append) is False
    reset_warnings()
    assert warn_once("k", "m", seen.append) is True
    assert seen == ["m", "m"]


def test_from_env_reads_three_variables_and_leaves_unset_as_none() -> None:
    flags = FleetFlags.from_env({"AQ_FLEET": "yes", "AQ_FLEET_SHADOW": "on", "PATH": "/bin"})
    assert flags == FleetFlags(fleet=True, route=None, shadow=True)
    assert flags.describe() == "fleet=1 route=- shadow=1"


def test_from_env_refuses_an_empty_variable_by_name() -> None:
    with pytest.raises(ConfigError, match=f"^{ENV_SHADOW}: empty"):
        FleetFlags.from_env({ENV_SHADOW: ""})


def test_from_toml_names_the_file_and_key() -> None:
    assert FleetFlags.from_toml({"enabled": True, "route": 0, "api": "x"}) == FleetFlags(True, False, None)
    with pytest.raises(ConfigError, match=r"^agent-queue.toml \[fleet\] shadow: "):
        FleetFlags.from_toml({"shadow": "maybe"})


def test_overlay_run_flag_over_env_over_toml() -> None:
    toml = FleetFlags(fleet=True, route=True, shadow=None)
    env = FleetFlags(fleet=None, route=False, shadow=True)
    flag = FleetFlags(fleet=None, route=None, shadow=False)
    merged = toml.overlay(env).overlay(flag)
    assert merged == FleetFlags(fleet=True, route=False, shadow=False)
    assert merged.resolve(lambda m: None) == ResolvedFlags(True, False, False)


def test_resolved_to_dict_for_status_json() -> None:
    flags = resolve_flags(True, True, True, lambda m: None)
    data = flags.to_dict()
    assert data["route"] is True and data["shadow"] is False and len(data["warnings"]) == 1

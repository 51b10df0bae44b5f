"""Settings: flag > env > config > default, booleans, fleet keys, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_queue.errors import ConfigError
from agent_queue.settings import load_settings


def test_precedence_flag_env_config_default(tmp_path: Path) -> None:
    (tmp_path / "agent-queue.toml").write_text('factory_id = "from-config"\nlog_format = "json"\n')
    root = {"root": str(tmp_path)}
    assert load_settings(root, {}).factory_id == "from-config"
    assert load_settings(root, {"AQ_FACTORY_ID": "from-env"}).factory_id == "from-env"
    assert load_settings({**root, "factory_id": "from-flag"}, {"AQ_FACTORY_ID": "from-env"}).factory_id == "from-flag"
    assert load_settings(root, {}).log_format == "json"
    assert load_settings(root, {"AQ_LOG_FORMAT": "text"}).log_format == "text"


def test_defaults_without_config(tmp_path: Path) -> None:
    s = load_settings({"root": str(tmp_path)}, {})
    assert s.config_path is None
    assert s.factory_id and "." not in s.factory_id
    assert (s.fleet, s.fleet_route, s.fleet_shadow) == (False, True, False)
    assert s.fleet_mode == "offline"
    assert {"shell", "claude", "codex", "gemini", "aider"} <= set(s.tools)


def test_root_from_env_and_explicit_config_via_env(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text('capabilities = ["gpu", "macos"]\n')
    s = load_settings({}, {"AQ_ROOT": str(tmp_path / "r"), "AQ_CONFIG": str(cfg)})
    assert s.root == tmp_path / "r"
    assert s.capabilities == ("gpu", "macos")
    assert load_settings({}, {"AQ_CONFIG": str(cfg), "AQ_CAPABILITIES": "a, b,,"}).capabilities == ("a", "b")


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings({"config": str(tmp_path / "nope.toml")}, {})


@pytest.mark.parametrize("text", ["1", "true", "YES", "On", " yes "])
def test_bool_true(tmp_path: Path, text: str) -> None:
    assert load_settings({"root": str(tmp_path)}, {"AQ_FLEET": text}).fleet is True


@pytest.mark.parametrize("text", ["0", "false", "No", "OFF"])
def test_bool_false(tmp_path: Path, text: str) -> None:
    assert load_settings({"root": str(tmp_path)}, {"AQ_FLEET": "1", "AQ_FLEET_ROUTE": text}).fleet_route is False


@pytest.mark.parametrize("text", ["", "2", "maybe", "y"])
def test_bad_bool_names_the_variable(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="AQ_FLEET_SHADOW"):
        load_settings({"root": str(tmp_path)}, {"AQ_FLEET_SHADOW": text})


def test_fleet_table_env_and_flags(tmp_path: Path) -> None:
    (tmp_path / "agent-queue.toml").write_text(
        '[fleet]\nenabled = true\nroute = "0"\nshadow = "yes"\napi = "http://u:pw@coord:8080/x"\n'
    )
    s = load_settings({"root": str(tmp_path)}, {"AQ_FLEET_TOKEN": "s3cret", "AQ_FLEET_API_CMD": "stub call"})
    assert (s.fleet, s.fleet_route, s.fleet_shadow) == (True, False, True)
    assert s.fleet_mode == "shadow"
    assert s.fleet_api_cmd == "stub call"
    d = s.describe()
    assert "s3cret" not in repr(s) and "s3cret" not in str(d)
    assert d["fleetToken"] == "<redacted>"
    assert "pw" not in d["fleetApi"] and "coord:8080" in d["fleetApi"]
    flagged = load_settings({"root": str(tmp_path), "fleet_route": True}, {})
    assert flagged.fleet_mode == "route" and flagged.fleet_flags.warnings


def test_host_env_never_holds_aq_variables(tmp_path: Path) -> None:
    s = load_settings({"root": str(tmp_path)},
                      {"PATH": "/bin", "AQ_FLEET_TOKEN": "x", "OPENAI_API_KEY": "k", "RANDOM_SECRET": "r"})
    assert s.host_env == {"PATH": "/bin", "OPENAI_API_KEY": "k"}


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("factory_id = ", "agent-queue.toml"),
        ("colour = 1\n", "colour"),
        ("[fleet]\nturbo = 1\n", "turbo"),
        ("[tools.shell]\nargv = ['x']\n", "shell"),
        ("[tools.x]\nargv = 'x'\n", r"\[tools.x\].argv"),
        ("[tools.x]\nargv = ['x']\nprompt_via = 'pigeon'\n", r"\[tools.x\].prompt_via"),
        ("[tools.x]\nargv = ['x']\nprompt = 'stdin'\n", "unknown key"),
        ("keep_worktrees_days = -1\n", "keep_worktrees_days"),
        ("[profiles.p]\ntimeout_s = -1\n", "profiles.p.timeout_s"),
        ("[profiles.p]\nmax_attempts = 1.5\n", "profiles.p.max_attempts"),
        ("[profiles.p]\nspeed = 1\n", "speed"),
        ("log_format = 'xml'\n", "xml"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, toml: str, needle: str) -> None:
    (tmp_path / "agent-queue.toml").write_text(toml)
    with pytest.raises(ConfigError, match=needle):
        load_settings({"root": str(tmp_path)}, {})


def test_profiles_and_tools_from_config(tmp_path: Path) -> None:
    (tmp_path / "agent-queue.toml").write_text(
        '[tools.echoer]\nargv = ["echo", "{job_id}"]\nenv_pass = ["ECHO_KEY"]\n'
        '[profiles.fast]\nenv = {A = "1"}\nargs = ["--quick"]\ntimeout_s = 5\nmax_attempts = 1\nship = ["true"]\n'
    )
    s = load_settings({"root": str(tmp_path)}, {"ECHO_KEY": "e"})
    assert s.tools["echoer"].argv == ("echo", "{job_id}")
    assert s.host_env["ECHO_KEY"] == "e"
    p = s.profiles["fast"]
    assert (p.env, p.args, p.timeout_s, p.max_attempts, p.ship) == ((("A", "1"),), ("--quick",), 5.0, 1, ("true",))
    assert "default" in s.profiles

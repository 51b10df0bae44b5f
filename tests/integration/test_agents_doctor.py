"""doctor: real probes of real executables; failures that a configured job needs fail the command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent_queue.adapters import BUILTIN_ADAPTERS, adapter_from_config
from agent_queue.doctor import clear_auth_expired, exit_code, format_checks, record_auth_expired, run_checks
from agent_queue.errors import TransportError


def fake_tool(tmp: Path, name: str) -> Path:
    """An executable named like the tool that prints a version."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(f"#!{sys.executable}\nprint('{name} 9.9.9')\n")
    exe.chmod(0o755)
    return bin_dir


def env_with(bin_dir: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "AQ_FLEET_TOKEN": "never-shown"}


def test_all_good_exits_zero_and_prints_versions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    env = env_with(fake_tool(tmp_path, "claude"))
    checks = run_checks(root, {"claude": BUILTIN_ADAPTERS["claude"]}, needed_tools={"claude"},
                        fleet_health=lambda: {"ok": True}, env=env)
    table = format_checks(checks)
    assert exit_code(checks) == 0, table
    assert "claude 9.9.9" in table and "git version" in table and "healthz ok" in table
    assert "never-shown" not in table


def test_missing_needed_tool_fails_but_unneeded_only_warns(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path / "empty")}
    adapters = {"codex": BUILTIN_ADAPTERS["codex"], "aider": BUILTIN_ADAPTERS["aider"]}
    checks = run_checks(tmp_path, adapters, needed_tools={"codex"}, needs_git=False, env=env)
    by_name = {c.name: c for c in checks}
    assert not by_name["tool codex"].ok and by_name["tool codex"].required
    assert not by_name["tool aider"].ok and not by_name["tool aider"].required
    assert exit_code(checks) == 1
    rows = [line.split()[:3] for line in format_checks(checks).splitlines()]
    assert ["FAIL", "tool", "codex"] in rows and ["warn", "tool", "aider"] in rows


def test_recorded_expired_login_is_reported_until_cleared(tmp_path: Path) -> None:
    env = env_with(fake_tool(tmp_path, "gemini"))
    adapters = {"gemini": adapter_from_config("gemini", {"version_argv": ["gemini"]})}
    record_auth_expired(tmp_path, "gemini", 1_700_000_000.0, "job-7", "API key not valid")
    checks = run_checks(tmp_path, adapters, needed_tools={"gemini"}, env=env)
    assert exit_code(checks) == 1 and "job job-7" in format_checks(checks)
    clear_auth_expired(tmp_path, "gemini")
    assert exit_code(run_checks(tmp_path, adapters, needed_tools={"gemini"}, env=env)) == 0


def test_unhealthy_coordinator_and_open_root_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o755)

    def down() -> object:
        raise TransportError("coordinator http://127.0.0.1:9: connection refused")

    checks = run_checks(root, {}, fleet_health=down, env={"PATH": os.environ["PATH"]})
    table = format_checks(checks)
    assert exit_code(checks) == 1 and "connection refused" in table
    perms = next(c for c in checks if c.name == "root permissions")
    assert not perms.ok and not perms.required and "chmod 700" in perms.detail


def test_doctor_warns_of_a_readable_token_file_and_a_remote_shared_token(tmp_path: Path) -> None:
    """Issue #19: a token file this user reads (so its tools do), a non-loopback coordinator taking the shared token."""
    from tests.integration.cli_support import aq, clean_env

    token_file = tmp_path / "fleet-token"
    token_file.write_text("shared-secret\n")
    token_file.chmod(0o600)
    env = clean_env(AQ_FLEET_TOKEN_FILE=str(token_file), AQ_FLEET="1", AQ_FLEET_API="http://10.255.255.1:9")
    out = aq(tmp_path / "root", "doctor", env=env)
    line = next(x for x in out.stdout.splitlines() if "token file" in x)
    assert line.startswith("warn") and str(token_file) in line and "shared-secret" not in out.stdout + out.stderr
    healthy = run_checks(tmp_path, {}, needs_git=False, fleet_health=lambda: None, env={"PATH": os.environ["PATH"]},
                         shared_token_host="coord.example")
    assert [(c.name, c.ok, c.required) for c in healthy[-1:]] == [("fleet token", False, False)]
    down = run_checks(tmp_path, {}, needs_git=False, fleet_health=lambda: 1 / 0, env={"PATH": os.environ["PATH"]},
                      shared_token_host="coord.example")
    assert all(c.name != "fleet token" for c in down)  # only a coordinator that answered accepted the token
    gone = run_checks(tmp_path, {}, needs_git=False, env={"PATH": os.environ["PATH"]},
                      token_file=tmp_path / "no-such-file")
    assert gone[-1].name == "token file" and gone[-1].ok

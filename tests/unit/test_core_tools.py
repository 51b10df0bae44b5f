"""Tool table: adapters are the one source of truth; invocation argv/env/stdin; known tools/profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_queue.adapters import BUILTIN_ADAPTERS
from agent_queue.errors import ConfigError, InvalidJob
from agent_queue.jobs import Job
from agent_queue.tools import DEFAULT_PROFILE, Invocation, Profile, check_known, host_env, invocation, parse_tools


def _inv(tmp_path: Path, tools_table: dict[str, object], job: Job, profile: Profile = DEFAULT_PROFILE,
         host: dict[str, str] | None = None) -> Invocation:
    tools = parse_tools(tools_table, "tools")
    return invocation(tools[job.tool], profile, job, workdir=tmp_path / "w", root=tmp_path, run_dir=tmp_path,
                      host=host or {"PATH": "/bin"})


def test_builtins_are_the_adapters_and_config_merges_over_them() -> None:
    tools = parse_tools({"claude": {"env_pass_extra": ["MY_PROXY"]}}, "tools")
    assert tools["codex"] is BUILTIN_ADAPTERS["codex"]
    assert tools["claude"].argv == BUILTIN_ADAPTERS["claude"].argv
    assert "MY_PROXY" in tools["claude"].env_pass
    with pytest.raises(ConfigError, match="shell"):
        parse_tools({"shell": {"argv": ["x"]}}, "tools")
    with pytest.raises(ConfigError, match=r"\[tools.x\]: unknown key"):
        parse_tools({"x": {"argv": ["x"], "pigeon": 1}}, "tools")


def test_placeholders_per_element_prompt_stays_literal_profile_args_appended(tmp_path: Path) -> None:
    table = {"t": {"argv": ["t", "--msg={prompt}", "{workdir}/x", "{job_id}"], "prompt_via": "argv"}}
    job = Job.from_dict({"id": "j1", "tool": "t", "prompt": "fix {root} now"})
    inv = _inv(tmp_path, table, job, Profile("p", args=("--extra",)))
    assert inv.argv == ("t", "--msg=fix {root} now", f"{tmp_path / 'w'}/x", "j1", "--extra")
    assert inv.stdin_path is None


def test_shell_runs_job_command_verbatim_and_a_prompt_goes_to_stdin(tmp_path: Path) -> None:
    job = Job.from_dict({"id": "j1", "command": ["echo", "{root}", "a b"], "prompt": "hello"})
    inv = _inv(tmp_path, {}, job, Profile("p", args=("--x",)))
    assert inv.argv == ("echo", "{root}", "a b")
    assert inv.stdin_path is not None and inv.stdin_path.read_text() == "hello"


def test_stdin_prompt_of_one_megabyte_is_a_private_file(tmp_path: Path) -> None:
    prompt = "✓" * 400_000
    inv = _inv(tmp_path, {}, Job.from_dict({"id": "j", "tool": "claude", "prompt": prompt}))
    assert inv.argv[:2] == ("claude", "-p") and all(prompt not in a for a in inv.argv)
    assert inv.stdin_path is not None and inv.stdin_path.read_text(encoding="utf-8") == prompt
    assert inv.stdin_path.stat().st_mode & 0o077 == 0


def test_tool_env_is_minimal_and_never_aq(tmp_path: Path) -> None:
    host = {"PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "k", "OTHER": "o", "AQ_FLEET_TOKEN": "t"}
    table = {"t": {"argv": ["t"], "env_pass": ["OPENAI_API_KEY", "AQ_FLEET_TOKEN"]}}
    profile = Profile("p", env=(("P", "1"), ("AQ_X", "no")))
    job = Job.from_dict({"id": "j", "tool": "t", "prompt": "x", "env": {"J": "2"}})
    inv = _inv(tmp_path, table, job, profile, host)
    assert inv.env == {"PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "k", "P": "1", "J": "2"}
    snapshot = host_env({**host, "ANTHROPIC_API_KEY": "a"}, parse_tools(None, "tools"))
    assert "ANTHROPIC_API_KEY" in snapshot and "OTHER" not in snapshot and "AQ_FLEET_TOKEN" not in snapshot


def test_unknown_tool_and_profile_are_refused() -> None:
    tools, profiles = parse_tools(None, "tools"), {"default": DEFAULT_PROFILE}
    with pytest.raises(InvalidJob, match="unknown tool 'robot'"):
        check_known(Job.from_dict({"id": "a", "tool": "robot", "prompt": "p"}), tools, profiles)
    with pytest.raises(InvalidJob, match="unknown profile 'gold'"):
        check_known(Job.from_dict({"id": "a", "command": ["x"], "profile": "gold"}), tools, profiles)

"""Tool table: argv templating per element, tool env, known tools/profiles."""

from __future__ import annotations

import pytest

from agent_queue.errors import InvalidJob
from agent_queue.jobs import Job
from agent_queue.tools import BUILTIN_TOOLS, DEFAULT_PROFILE, Profile, ToolSpec, check_known, render_argv, tool_env

VALUES = {"prompt": "fix {root} now", "prompt_file": "/p.txt", "workdir": "/w", "job_id": "j1", "root": "/r"}


def test_placeholders_substituted_per_element_and_prompt_stays_literal() -> None:
    spec = ToolSpec("t", ("t", "--msg={prompt}", "{workdir}/x", "{job_id}", "{unknown}"))
    job = Job.from_dict({"id": "j1", "tool": "t", "prompt": "p"})
    argv = render_argv(spec, Profile("p", args=("--extra",)), job, VALUES)
    assert argv == ("t", "--msg=fix {root} now", "/w/x", "j1", "{unknown}", "--extra")


def test_shell_runs_job_command_verbatim() -> None:
    job = Job.from_dict({"id": "j1", "command": ["echo", "{root}", "a b"]})
    assert render_argv(BUILTIN_TOOLS["shell"], Profile("p", args=("--x",)), job, VALUES) == ("echo", "{root}", "a b")


def test_builtin_agents_take_the_prompt_via_stdin_or_file() -> None:
    for name in ("claude", "codex", "gemini", "aider"):
        spec = BUILTIN_TOOLS[name]
        assert spec.prompt_via == "stdin" or any("{prompt_file}" in a for a in spec.argv), name
        assert not any("{prompt}" in a for a in spec.argv), name


def test_tool_env_is_minimal_and_never_aq() -> None:
    host = {"PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "k", "OTHER": "o"}
    spec = ToolSpec("t", ("t",), env_pass=("OPENAI_API_KEY", "AQ_FLEET_TOKEN"))
    profile = Profile("p", env=(("P", "1"), ("AQ_X", "no")))
    job = Job.from_dict({"id": "j", "command": ["x"], "env": {"J": "2", "AQ_FLEET_TOKEN": "leak"}})
    env = tool_env({**host, "AQ_FLEET_TOKEN": "t"}, spec, profile, job)
    assert env == {"PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "k", "P": "1", "J": "2"}


def test_unknown_tool_and_profile_are_refused() -> None:
    tools, profiles = dict(BUILTIN_TOOLS), {"default": DEFAULT_PROFILE}
    with pytest.raises(InvalidJob, match="unknown tool 'robot'"):
        check_known(Job.from_dict({"id": "a", "tool": "robot", "prompt": "p"}), tools, profiles)
    with pytest.raises(InvalidJob, match="unknown profile 'gold'"):
        check_known(Job.from_dict({"id": "a", "command": ["x"], "profile": "gold"}), tools, profiles)

"""Adapters as data: argv templating, minimal env, config merging, parsers, limit/login detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_queue.adapters import BUILTIN_ADAPTERS, AgentAdapter, adapter_from_config
from agent_queue.agent_output import reset_time_from_text
from agent_queue.assessment import assess
from agent_queue.errors import BadInput, ConfigError
from agent_queue.invocation import MAX_ARGV_PROMPT_BYTES, prepare_invocation, render_argv, tool_env
from agent_queue.jobs import Job

NOW = 1_700_000_000.0


def job(**kw: object) -> Job:
    return Job.from_dict({"id": "j1", "tool": "claude", "prompt": "fix it", **kw})


def test_render_argv_substitutes_inside_each_element_and_never_splits() -> None:
    a = AgentAdapter(name="x", argv=("tool", "--msg={prompt}", "{workdir}", "--id", "{job_id}"), prompt_via="argv")
    evil = "a b; rm -rf / $(touch pwned) --force"
    argv = render_argv(a, {"prompt": evil, "workdir": "/w d", "job_id": "j1"})
    assert argv == ["tool", f"--msg={evil}", "/w d", "--id", "j1"]


def test_render_argv_refuses_a_missing_value() -> None:
    a = AgentAdapter(name="x", argv=("tool", "{root}"))
    with pytest.raises(BadInput, match=r"\{root\}"):
        render_argv(a, {})


def test_tool_env_is_minimal_and_never_leaks_aq_variables() -> None:
    a = adapter_from_config("claude", {"env_pass_extra": ["AQ_FLEET_TOKEN", "AQ_*", "MY_KEY"]})
    base = {
        "PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "ANTHROPIC_API_KEY": "k", "MY_KEY": "m",
        "AQ_FLEET_TOKEN": "secret", "AQ_ROOT": "/r", "OPENAI_API_KEY": "not-for-claude", "SSH_AUTH_SOCK": "/s",
    }
    env = tool_env(a, base, {"AQ_FLEET_TOKEN": "again", "JOB_VAR": "1"})
    assert env == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "ANTHROPIC_API_KEY": "k", "MY_KEY": "m",
                   "JOB_VAR": "1"}


def test_config_merges_over_builtin_and_appends_extras() -> None:
    a = adapter_from_config("codex", {"argv": ["/opt/codex", "exec", "--json", "-"], "env_pass_extra": ["FOO"],
                                      "backoff_s": 60})
    assert a.argv[0] == "/opt/codex"
    assert "OPENAI_*" in a.env_pass and a.env_pass[-1] == "FOO"
    assert a.output_format == "codex-jsonl" and a.backoff_s == 60.0


@pytest.mark.parametrize(
    ("name", "table", "msg"),
    [
        ("claude", {"argvv": []}, "unknown key"),
        ("mytool", {"prompt_via": "stdin"}, "needs an 'argv'"),
        ("claude", {"prompt_via": "pigeon"}, "prompt_via"),
        ("claude", {"argv": ["claude", "{promt}"]}, "unknown placeholder"),
        ("mytool", {"argv": ["t"], "prompt_via": "file"}, "prompt_file"),
        ("claude", {"env_pass": ["BAD NAME"]}, "not a variable name"),
        ("claude", {"rate_limit_patterns": ["("]}, "bad regular expression"),
        ("claude", {"output_format": "xml"}, "output_format"),
    ],
)
def test_config_errors_name_the_table_and_key(name: str, table: dict[str, object], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg) as exc:
        adapter_from_config(name, table)
    assert f"[tools.{name}]" in str(exc.value)


def test_every_builtin_keeps_big_prompts_out_of_argv(tmp_path: Path) -> None:
    big = "x" * (1024 * 1024)
    for name, adapter in BUILTIN_ADAPTERS.items():
        if name == "shell":
            continue
        inv = prepare_invocation(adapter, job(tool=name, prompt=big), workdir=tmp_path, root=tmp_path,
                                 run_dir=tmp_path, base_env={"PATH": "/bin"})
        assert all(len(a) < 4096 for a in inv.argv), name
        delivered = inv.stdin if inv.stdin is not None else inv.prompt_file.read_bytes()  # type: ignore[union-attr]
        assert big.encode() in delivered, name


def test_argv_prompt_over_the_limit_is_refused_clearly(tmp_path: Path) -> None:
    a = adapter_from_config("mytool", {"argv": ["t", "{prompt}"], "prompt_via": "argv"})
    with pytest.raises(BadInput, match="prompt_via"):
        prepare_invocation(a, job(tool="mytool", prompt="y" * (MAX_ARGV_PROMPT_BYTES + 1)), workdir=tmp_path,
                           root=tmp_path, run_dir=tmp_path, base_env={})


def test_shell_adapter_runs_the_job_command(tmp_path: Path) -> None:
    j = Job.from_dict({"id": "s1", "command": ["make", "test"], "env": {"X": "1"}})
    inv = prepare_invocation(BUILTIN_ADAPTERS["shell"], j, workdir=tmp_path, root=tmp_path, run_dir=tmp_path,
                             base_env={"PATH": "/bin", "AQ_FLEET_TOKEN": "t"})
    assert inv.argv == ("make", "test") and inv.stdin is None and inv.env == {"PATH": "/bin", "X": "1"}


def test_parse_claude_json_and_stream_json() -> None:
    res = {"type": "result", "total_cost_usd": 0.42, "num_turns": 7, "session_id": "s1",
           "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3}, "is_error": False}
    claude = BUILTIN_ADAPTERS["claude"]
    want = {"costUsd": 0.42, "turns": 7, "sessionId": "s1", "tokensIn": 15, "tokensOut": 3}
    assert claude.parse_output(json.dumps(res)) == want
    stream = "\n".join([json.dumps({"type": "system", "session_id": "s1"}), "noise", json.dumps(res)])
    assert claude.parse_output(stream) == want
    assert claude.parse_output("not json at all") == {}


def test_parse_codex_sums_turns() -> None:
    lines = [{"type": "thread.started", "thread_id": "t9"}, {"type": "turn.completed", "usage": {
        "input_tokens": 5, "output_tokens": 2}}, {"type": "turn.completed", "usage": {"input_tokens": 1,
                                                                                        "output_tokens": 1}}]
    out = BUILTIN_ADAPTERS["codex"].parse_output("\n".join(json.dumps(x) for x in lines))
    assert out == {"sessionId": "t9", "tokensIn": 6, "tokensOut": 3, "turns": 2}


def test_parse_gemini_and_aider() -> None:
    g = {"response": "ok", "session_id": "g1", "stats": {"models": {"a": {"tokens": {"prompt": 3, "candidates": 4},
                                                                          "api": {"totalRequests": 2}}}}}
    assert BUILTIN_ADAPTERS["gemini"].parse_output(json.dumps(g)) == {
        "sessionId": "g1", "tokensIn": 3, "tokensOut": 4, "turns": 2}
    text = "Tokens: 2.1k sent, 150 received. Cost: $0.01 message, $0.01 session.\n" \
           "Tokens: 1k sent, 50 received. Cost: $0.02 message, $0.03 session."
    assert BUILTIN_ADAPTERS["aider"].parse_output(text) == {
        "costUsd": 0.03, "tokensIn": 3100, "tokensOut": 200, "turns": 2}


def test_reset_times() -> None:
    assert reset_time_from_text("Claude AI usage limit reached|1700003600", NOW) == 1700003600.0
    assert reset_time_from_text("Try again in 2 hours 5 minutes.", NOW) == NOW + 7500
    assert reset_time_from_text("Please retry in 31.5s.", NOW) == NOW + 31.5
    at = reset_time_from_text("5-hour limit reached ∙ resets 3pm (UTC)", NOW)
    assert at is not None and NOW < at <= NOW + 86400 and int(at) % 3600 == 0
    assert reset_time_from_text("nothing here", NOW) is None


def test_rate_limit_needs_a_failed_attempt_and_falls_back_to_backoff() -> None:
    codex = BUILTIN_ADAPTERS["codex"]
    assert codex.detect_rate_limit(0, "I fixed the 429 rate limit handling", NOW) is None
    assert codex.detect_rate_limit(1, "error: 429 Too Many Requests", NOW) == NOW + codex.backoff_s
    assert codex.detect_rate_limit(1, "segfault", NOW) is None


def test_claude_error_result_counts_as_failure_even_with_exit_zero() -> None:
    out = json.dumps({"type": "result", "is_error": True, "result": "Claude AI usage limit reached|1700009999"})
    assert BUILTIN_ADAPTERS["claude"].detect_rate_limit(0, out, NOW) == 1700009999.0


def test_assess_verdicts() -> None:
    claude = BUILTIN_ADAPTERS["claude"]
    ok = json.dumps({"type": "result", "total_cost_usd": 0.5, "is_error": False})
    assert assess(claude, job(), 0, ok, NOW).verdict == "ok"
    over = assess(claude, job(budget={"costUsd": 0.25}), 0, ok, NOW)
    assert over.verdict == "over_budget" and "0.5000" in over.reason and over.report["costUsd"] == 0.5
    assert assess(claude, job(), 1, "Invalid API key · Please run /login", NOW).verdict == "auth_expired"
    limited = assess(claude, job(), 1, "Claude AI usage limit reached|1700009999", NOW)
    assert limited.verdict == "rate_limited" and limited.not_before == 1700009999.0
    assert assess(claude, job(), 3, "boom", NOW).verdict == "failed"

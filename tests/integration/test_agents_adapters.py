"""The real adapters drive a fake agent process: prompt delivery, parsing, limits, budgets, env."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "fakes"))
from agent_helpers import fake_adapter, run_invocation  # noqa: E402

from agent_queue.assessment import assess  # noqa: E402
from agent_queue.invocation import prepare_invocation  # noqa: E402
from agent_queue.jobs import Job  # noqa: E402

AGENTS = ("claude", "codex", "gemini", "aider")
NOW = 1_700_000_000.0
BASE_ENV = {"PATH": "/usr/bin:/bin", "AQ_FLEET_TOKEN": "s3cret", "AQ_ROOT": "/r", "LANG": "C.UTF-8"}


def run(tool: str, prompt: str, tmp: Path, **spec: object) -> tuple[int, str, Job]:
    job = Job.from_dict({"id": f"j-{tool}", "tool": tool, "prompt": prompt, **spec})
    work, run_dir = tmp / "work", tmp / "run"
    work.mkdir(exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    inv = prepare_invocation(fake_adapter(tool), job, workdir=work, root=tmp, run_dir=run_dir, base_env=BASE_ENV)
    code, out = run_invocation(inv)
    return code, out, job


def info_of(out: str) -> dict[str, object]:
    for line in reversed(out.splitlines()):
        if line.startswith("{") and "fake_prompt_sha256" in line:
            obj = json.loads(line)
            if "item" in obj:
                obj.update(obj["item"])
            return obj
    raise AssertionError(f"no info in {out[-500:]!r}")


@pytest.mark.parametrize("tool", AGENTS)
def test_one_megabyte_prompt_arrives_whole_and_the_agent_edits_its_cwd(tool: str, tmp_path: Path) -> None:
    prompt = "Refactor everything. " + "é" * (512 * 1024)  # > 1 MB in UTF-8
    code, out, job = run(tool, prompt, tmp_path)
    assert code == 0, out[-500:]
    info = info_of(out)
    assert info["fake_prompt_sha256"] in (
        hashlib.sha256(prompt.encode()).hexdigest(),
        hashlib.sha256((prompt + "\n\n" + "Carry out the task given above.").encode()).hexdigest(),
    )
    assert info["fake_saw_aq_env"] == []  # neither AQ_FLEET_TOKEN nor any AQ_* reached the tool
    assert (tmp_path / "work" / "AGENT_CHANGE.txt").read_text() == f"edited by fake {tool}\n"
    verdict = assess(fake_adapter(tool), job, code, out, NOW)
    assert verdict.verdict == "ok"
    assert verdict.report["tokensIn"] and verdict.report["tokensOut"]


def test_parsed_fields_reach_the_report(tmp_path: Path) -> None:
    code, out, job = run("claude", "go [[cost=0.75]]", tmp_path)
    report = assess(fake_adapter("claude"), job, code, out, NOW).report
    assert report == {"tool": "claude", "exitCode": 0, "costUsd": 0.75, "tokensIn": 120, "tokensOut": 50,
                      "turns": 3, "sessionId": "sess-claude-1"}


@pytest.mark.parametrize("tool", AGENTS)
def test_rate_limit_requeues_with_not_before(tool: str, tmp_path: Path) -> None:
    code, out, job = run(tool, "go [[ratelimit]]", tmp_path)
    verdict = assess(fake_adapter(tool), job, code, out, NOW)
    assert code == 1 and verdict.verdict == "rate_limited"
    expected = {"claude": 4102444800.0, "codex": NOW + 7500, "gemini": NOW + 31.5,
                "aider": NOW + fake_adapter("aider").backoff_s}[tool]
    assert verdict.not_before == expected


@pytest.mark.parametrize("tool", AGENTS)
def test_expired_login_is_recognised(tool: str, tmp_path: Path) -> None:
    code, out, job = run(tool, "go [[auth]]", tmp_path)
    assert assess(fake_adapter(tool), job, code, out, NOW).verdict == "auth_expired"


@pytest.mark.parametrize("tool", ["claude", "aider"])
def test_overspend_quarantines(tool: str, tmp_path: Path) -> None:
    code, out, job = run(tool, "go [[cost=3.0]]", tmp_path, budget={"costUsd": 1.0})
    verdict = assess(fake_adapter(tool), job, code, out, NOW)
    assert code == 0 and verdict.verdict == "over_budget" and "budget.costUsd" in verdict.reason


def test_plain_failure_is_a_failure(tmp_path: Path) -> None:
    code, out, job = run("codex", "go [[fail]]", tmp_path)
    assert assess(fake_adapter("codex"), job, code, out, NOW).verdict == "failed"


def test_a_hanging_agent_is_killed_with_its_group(tmp_path: Path) -> None:
    job = Job.from_dict({"id": "hang", "tool": "gemini", "prompt": "[[hang]]"})
    inv = prepare_invocation(fake_adapter("gemini"), job, workdir=tmp_path, root=tmp_path, run_dir=tmp_path,
                             base_env=BASE_ENV)
    code, _ = run_invocation(inv, timeout=1.0)
    assert code == -9

"""What a finished attempt means, from its exit status and output: ok, failed, usage limit, login, budget.

``assess`` is asked after the tool exited: what it reported (cost, tokens,
turns, session id, parsed by ``agent_output``) and whether this attempt is a
real failure, an agent-side limit (requeue with ``notBefore``, no attempt
counted), an expired login, or over the job's cost budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent_queue.adapters import AgentAdapter, failed
from agent_queue.jobs import Job

Verdict = Literal["ok", "failed", "rate_limited", "auth_expired", "over_budget"]


@dataclass(frozen=True)
class Assessment:
    """What one finished attempt means for its job.

    ``ok``/``failed``: as usual (failed counts an attempt). ``rate_limited``:
    put the job back with ``not_before``, do NOT count an attempt.
    ``auth_expired`` and ``over_budget``: quarantine with ``reason``.
    ``report`` goes into result.json as is.
    """

    verdict: Verdict
    report: Mapping[str, Any]
    reason: str = ""
    not_before: float | None = None


def assess(adapter: AgentAdapter, job: Job, exit_code: int, output: str, now: float) -> Assessment:
    """Classify a finished attempt from its exit status and full output (stdout+stderr)."""
    report = {k: v for k, v in adapter.parse_output(output).items() if k != "isError"}
    report = {"tool": adapter.name, "exitCode": exit_code, **report}
    not_before = adapter.detect_rate_limit(exit_code, output, now)
    if not_before is not None:
        return Assessment("rate_limited", report, f"tool {adapter.name} hit a usage/rate limit", not_before)
    if adapter.detect_auth_expired(exit_code, output):
        return Assessment("auth_expired", report, f"tool {adapter.name}: login expired or API key invalid")
    reason = budget_exceeded(job, report)
    if reason:
        return Assessment("over_budget", report, reason)
    if exit_code != 0 or failed(adapter, exit_code, output):
        return Assessment("failed", report, f"tool {adapter.name} exited with status {exit_code}")
    return Assessment("ok", report)


def budget_exceeded(job: Job, report: Mapping[str, Any]) -> str | None:
    """The quarantine reason when the attempt's reported cost is over ``budget.costUsd``, else None."""
    limit = job.budget.cost_usd
    cost = report.get("costUsd")
    if limit is None or not isinstance(cost, int | float):
        return None
    if float(cost) > limit:
        return f"over budget: the attempt cost ${float(cost):.4f}, budget.costUsd is ${limit:.4f}"
    return None


def transcript_name(adapter: AgentAdapter) -> str:
    """File name under the job's directory for the tool's full output (kept for post-mortems)."""
    names = {"claude-json": "transcript.json", "codex-jsonl": "transcript.jsonl", "gemini-json": "transcript.json"}
    return names.get(adapter.output_format, "transcript.log")

"""Reading the shadow log back: counts, agreement rate, recent divergences, --since, corrupt lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import BadInput, StateError
from agent_queue.fleet.shadow import (
    ShadowProbe,
    format_summary,
    parse_since,
    shadow_log_path,
    summarize,
    summary_to_json,
)
from agent_queue.jobs import Job
from agent_queue.timeutil import parse_rfc3339

T0 = parse_rfc3339("2024-05-01T10:00:00Z")


def rec(minute: int, verdict: str | None = None, local: str | None = None, coord: str | None = None,
        error: str | None = None) -> str:
    out: dict[str, Any] = {"time": f"2024-05-01T10:{minute:02d}:00.000Z", "iteration": minute,
                           "factoryId": "f1-shadow"}
    if verdict:
        out.update(verdict=verdict, localJobId=local, coordJobId=coord)
    if error:
        out["error"] = error
    return json.dumps(out)


KNOWN = [
    rec(0, "AGREE", "a", "a"),
    rec(1, "DIVERGE", "b", "c"),
    rec(2, "AGREE", "c", "c"),
    "{not json",
    rec(3, "COORD_EMPTY", "d", None),
    rec(4, "IDLE"),
    rec(5, error="claim.timeout"),
    json.dumps({"time": "2024-05-01T10:06:00Z", "verdict": "MAYBE"}),
    json.dumps({"verdict": "AGREE"}),
    json.dumps(["AGREE"]),
    "",
    rec(7, "LOCAL_EMPTY", None, "e"),
    rec(8, "AGREE", "f", "f"),
    rec(9, "DIVERGE", "g", "h"),
    '{"time": "2024-05-01T10:10:00.000Z", "iteration": 10, "verd',  # truncated by a crash
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "fleet-shadow.log"
    path.write_bytes("\n".join(KNOWN).encode() + b"\n\xff\xfe binary junk\n")
    return path


def test_counts_rate_and_recent_divergences(log: Path) -> None:
    s = summarize(log)
    assert dict(s.counts) == {"AGREE": 3, "DIVERGE": 2, "COORD_EMPTY": 1, "LOCAL_EMPTY": 1}
    assert s.total == 7
    assert s.agreement_rate == pytest.approx(3 / 7)
    assert s.idle == 1
    assert dict(s.errors) == {"claim.timeout": 1}
    assert s.corrupt == 6  # bad json, unknown verdict, no time, not an object, truncated, binary
    assert [(r.verdict, r.local_job_id, r.coord_job_id, r.iteration) for r in s.recent] == [
        ("DIVERGE", "g", "h", 9), ("LOCAL_EMPTY", None, "e", 7), ("COORD_EMPTY", "d", None, 3),
        ("DIVERGE", "b", "c", 1),
    ]


def test_recent_is_limited_to_the_newest(log: Path) -> None:
    assert [r.iteration for r in summarize(log, recent=2).recent] == [9, 7]
    assert summarize(log, recent=0).recent == ()


def test_since_filters_by_time(log: Path) -> None:
    s = summarize(log, since=T0 + 3 * 60)
    assert dict(s.counts) == {"AGREE": 1, "DIVERGE": 1, "COORD_EMPTY": 1, "LOCAL_EMPTY": 1}
    assert s.agreement_rate == pytest.approx(0.25)
    assert s.idle == 1 and dict(s.errors) == {"claim.timeout": 1}
    assert [r.iteration for r in s.recent] == [9, 7, 3]
    assert s.corrupt == 6  # a corrupt line has no time to filter by: always reported


def test_missing_log_is_an_empty_summary(tmp_path: Path) -> None:
    s = summarize(tmp_path / "nope.log")
    assert not s.exists and s.total == 0 and s.agreement_rate is None
    assert "no shadow log" in format_summary(s)
    assert json.loads(summary_to_json(s))["agreementRate"] is None


def test_unreadable_log_is_one_clear_state_error(tmp_path: Path) -> None:
    (tmp_path / "dir.log").mkdir()
    with pytest.raises(StateError, match=r"^shadow log .*dir\.log: cannot read it"):
        summarize(tmp_path / "dir.log")


def test_format_summary_shows_counts_rate_and_divergence_ids(log: Path) -> None:
    text = format_summary(summarize(log))
    assert "AGREE               3" in text
    assert "total               7" in text
    assert "42.9% (3/7)" in text
    assert "errors              1 (claim.timeout 1)" in text
    assert "corrupt             6 lines skipped" in text
    assert "DIVERGE     local=g coord=h" in text
    assert text.index("local=g") < text.index("local=b")  # newest first


def test_json_summary_is_stable_and_complete(log: Path) -> None:
    data = json.loads(summary_to_json(summarize(log, since=T0)))
    assert data["counts"] == {"AGREE": 3, "COORD_EMPTY": 1, "DIVERGE": 2, "LOCAL_EMPTY": 1}
    assert data["total"] == 7
    assert data["agreementRate"] == pytest.approx(3 / 7)
    assert data["since"] == "2024-05-01T10:00:00.000Z"
    assert data["corruptLines"] == 6 and data["idle"] == 1 and data["errors"] == {"claim.timeout": 1}
    assert data["recentDivergences"][0] == {"time": "2024-05-01T10:09:00.000Z", "iteration": 9,
                                            "verdict": "DIVERGE", "localJobId": "g", "coordJobId": "h"}


def test_what_the_probe_writes_the_report_reads(tmp_path: Path) -> None:
    class Coordinator:
        def __init__(self) -> None:
            self.next: str | None = None

        def claim(self, dry_run: bool = False, factory_id: str | None = None) -> Any:
            return None if self.next is None else (Job.from_dict({"id": self.next, "command": ["true"]}), None)

        def release(self, *a: Any, **k: Any) -> None:
            raise AssertionError("nothing was leased")

        def shadow_report(self, *a: Any) -> None:
            return None

    coord = Coordinator()
    probe = ShadowProbe(coord, "f1", shadow_log_path(tmp_path), clock=lambda: T0, log_idle=True)
    for i, (local, remote) in enumerate([("a", "a"), ("b", "x"), (None, None), ("c", "c"), ("d", None)]):
        coord.next = remote
        probe.observe(i, local)
    s = summarize(shadow_log_path(tmp_path))
    assert dict(s.counts) == {"AGREE": 2, "DIVERGE": 1, "COORD_EMPTY": 1, "LOCAL_EMPTY": 0}
    assert s.idle == 1 and s.corrupt == 0 and s.agreement_rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", T0 - 90), ("15m", T0 - 900), ("2h", T0 - 7200), ("7d", T0 - 7 * 86400), ("1.5h", T0 - 5400),
     ("2024-05-01T09:00:00Z", T0 - 3600), ("2024-05-01T12:00:00+02:00", T0)],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=T0) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "", "5 minutes", "-5m", "5w"])
def test_parse_since_refuses_with_a_clear_message(text: str) -> None:
    with pytest.raises(BadInput, match="^--since: .* is neither an RFC 3339 time nor a duration"):
        parse_since(text, now=T0)

"""CLI option parsing and the one error -> exit code mapping, in-process (CliRunner / main)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_queue.cli import cli, main


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("AQ_ROOT", "AQ_CONFIG", "AQ_FACTORY_ID", "AQ_FLEET", "AQ_LOG_FORMAT", "AQ_FLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    r = tmp_path / "root"
    monkeypatch.setenv("AQ_ROOT", str(r))
    return r


def job_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "inbox").iterdir()) if (root / "inbox").exists() else []


def test_enqueue_flags_build_the_spec(root: Path) -> None:
    res = CliRunner().invoke(cli, ["enqueue", "--id", "j1", "--priority", "4", "--requires", "gpu", "--requires",
                                   "macos", "--verify", "pytest -q 'a b'", "--timeout", "9", "--max-attempts", "2",
                                   "--", "echo", "--not-an-option", "x"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "j1"
    spec = json.loads((root / "inbox" / "j1" / "job.json").read_text())
    assert spec["command"] == ["echo", "--not-an-option", "x"]
    assert spec["verify"] == ["pytest", "-q", "a b"]
    assert spec["requires"] == ["gpu", "macos"] and spec["priority"] == 4
    assert spec["budget"] == {"timeoutS": 9.0, "maxAttempts": 2}


def test_enqueue_generates_a_sortable_id(root: Path) -> None:
    ids = [CliRunner().invoke(cli, ["enqueue", "--", "true"]).output.strip() for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3 and all(i.startswith("job-") for i in ids)


def test_enqueue_file_and_stdin(root: Path, tmp_path: Path) -> None:
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"id": "from-file", "command": ["true"]}))
    assert CliRunner().invoke(cli, ["enqueue", str(f)]).output.strip() == "from-file"
    res = CliRunner().invoke(cli, ["enqueue", "-"], input=json.dumps({"id": "from-stdin", "command": ["true"]}))
    assert res.output.strip() == "from-stdin"
    assert job_files(root) == ["from-file", "from-stdin"]


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["enqueue", "-"], "{not json", "malformed JSON at line 1"),
        (["enqueue", "-"], '{"id": "a"}', "command"),
        (["enqueue", "-"], '{"id": "a", "tool": "claude"}', "prompt"),
        (["enqueue", "--id", "a/b", "--", "true"], None, "not a valid id"),
        (["enqueue", "--id", "..", "--", "true"], None, "not a valid id"),
        (["enqueue", "--id", "has space", "--", "true"], None, "not a valid id"),
        (["enqueue", "--id", "x" * 129, "--", "true"], None, "at most 128"),
        (["enqueue", "--tool", "robot", "--prompt", "p"], None, "unknown tool 'robot'"),
        (["enqueue", "--profile", "gold", "--", "true"], None, "unknown profile 'gold'"),
        (["enqueue", "-"], '{"id": "a", "command": "ls -l"}', "command: must be a list"),
        (["enqueue", "--verify", "'unclosed", "--", "true"], None, "--verify"),
        (["enqueue", "spec.json", "--id", "x"], None, "not both"),
        (["enqueue", "/no/such/file.json"], None, "cannot read"),
        (["run", "--once", "--drain"], None, "exclude"),
        (["run", "--fleet"], None, "fleet mode needs AQ_FLEET_API_CMD or AQ_FLEET_API"),
        (["requeue", "ghost"], None, "not found"),
        (["logs", "ghost"], None, "not found"),
        (["status", "--bogus"], None, "--bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str],
    stdin: str | None, needle: str,
) -> None:
    if stdin is not None:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert job_files(root) == []


def test_duplicate_id_exits_2_and_keeps_the_first(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", "--id", "d", "--", "echo", "first"]) == 0
    assert main(["enqueue", "--id", "d", "--", "echo", "second"]) == 2
    assert "already used" in capsys.readouterr().err
    assert json.loads((root / "inbox" / "d" / "job.json").read_text())["command"] == ["echo", "first"]


def test_bad_env_boolean_exits_2_naming_it(root: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQ_FLEET", "sometimes")
    assert main(["status"]) == 2
    assert "AQ_FLEET" in capsys.readouterr().err


def test_fleet_flags_reach_settings(root: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQ_FLEET", "1")
    assert main(["run", "--no-fleet", "--once"]) == 0  # flag beats env
    assert main(["run", "--once"]) == 2
    assert "fleet mode" in capsys.readouterr().err


def test_status_json_redacts_the_token(root: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQ_FLEET_TOKEN", "super-secret-value")
    root.mkdir()  # status reads a queue, it never creates one
    assert main(["--factory-id", "f-7", "status", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert "super-secret-value" not in out
    assert report["settings"]["fleetToken"] == "<redacted>" and report["settings"]["factoryId"] == "f-7"
    assert report["counts"] == {"inbox": 0, "running": 0, "shipped": 0, "quarantine": 0, "cancelled": 0}
    assert main(["status"]) == 0
    assert "super-secret-value" not in capsys.readouterr().out

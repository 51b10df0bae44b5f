"""coordinator-stub's click commands: parsing, output and exit codes (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator_stub.cli import main


def test_enqueue_status_and_reap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"id": "z", "command": ["true"]}))
    state = str(tmp_path / "c")
    assert main(["--state", state, "enqueue", str(spec)]) == 0
    assert main(["--state", state, "enqueue", str(spec)]) == 0
    assert main(["--state", state, "status", "--json"]) == 0
    assert main(["--state", state, "reap"]) == 0
    out = capsys.readouterr().out
    assert "enqueued z" in out and "already enqueued z" in out
    assert '"queued": 1' in out


def test_errors_become_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AQ_STUB_STATE", raising=False)
    assert main(["status"]) == 2
    assert main(["--state", str(tmp_path), "--lease-ttl", "0", "status"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["--state", str(tmp_path / "c"), "enqueue", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("coordinator-stub: ") for line in err)


def test_factory_and_token_commands_on_a_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "c")
    assert main(["--state", state, "factory", "add", "f1", "--capability", "gpu"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("aqf_")
    assert main(["--state", state, "factory", "rotate", "f1"]) == 0
    second = capsys.readouterr().out.strip()
    assert main(["--state", state, "factory", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    (f,) = json.loads(listed)
    assert f["capabilities"] == ["gpu"] and len(f["tokenIds"]) == 2
    assert token not in listed and second not in listed
    assert not any(token in p.read_text() for p in (tmp_path / "c").rglob("*") if p.is_file())
    assert main(["--state", state, "token", "add", "--scope", "submit", "--name", "ci"]) == 0
    assert capsys.readouterr().out.startswith("aqt_")
    assert main(["--state", state, "factory", "revoke", "f1"]) == 0
    assert "revoked f1" in capsys.readouterr().out
    assert main(["--state", state, "factory", "revoke", "f1"]) == 2
    assert main(["--state", state, "token", "revoke", "000000000000"]) == 2

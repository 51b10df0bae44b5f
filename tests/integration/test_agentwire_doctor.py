"""`agent-queue doctor` through the real CLI: exit 1 when a configured tool is missing, 0 when all is there."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import aq, clean_env
from test_agentwire_run import fake_bin


def doctor_env(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    return clean_env(PATH=f"{bin_dir}:/usr/bin:/bin", AQ_FLEET_TOKEN="tok-doctor-secret")


def test_doctor_fails_when_a_configured_tool_is_missing_and_passes_when_present(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir(mode=0o700)
    (root / "agent-queue.toml").write_text('[tools.codex]\nbackoff_s = 60\n')
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    missing = aq(root, "doctor", env=doctor_env(tmp_path, empty))
    assert missing.returncode == 1, missing.stderr
    assert any(line.startswith("FAIL") and "tool codex" in line and "not found" in line
               for line in missing.stdout.splitlines())
    present = aq(root, "doctor", env=doctor_env(tmp_path, fake_bin(tmp_path / "bin", "codex")))
    assert present.returncode == 0, present.stdout
    assert "codex 9.9.9-fake" in present.stdout and "tok-doctor-secret" not in present.stdout


def test_doctor_requires_the_tool_of_a_waiting_job(tmp_path: Path) -> None:
    root = tmp_path / "r"
    env = doctor_env(tmp_path, fake_bin(tmp_path / "bin", "codex"))
    spec = {"id": "needs-claude", "tool": "claude", "prompt": "p"}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec), env=env).returncode == 0
    out = aq(root, "doctor", env=env)
    assert out.returncode == 1 and "claude not found on PATH" in out.stdout


def test_deploy_env_file_uses_only_variables_settings_reads() -> None:
    repo = Path(__file__).parents[2]
    settings_src = (repo / "agent_queue" / "settings.py").read_text()
    example = (repo / "deploy" / "env" / "agent-queue.env.example").read_text()
    names = {line.lstrip("# ").split("=", 1)[0] for line in example.splitlines()
             if line.lstrip("# ").startswith("AQ_") and "=" in line}
    assert {"AQ_ROOT", "AQ_FACTORY_ID", "AQ_FLEET", "AQ_FLEET_API", "AQ_FLEET_TOKEN", "AQ_CAPABILITIES"} <= names
    assert all(f'"{name}"' in settings_src for name in names), names

"""Secrets and permissions: the fleet token reaches no file, output or tool; state is private.

A real daemon runs jobs with AQ_FLEET_TOKEN in its environment, one of
them dumping its whole environment into its log and a file; then every file
under the test's directory is grepped for the token, and every file and
directory under the roots is checked for 0600 / 0700.
"""

from __future__ import annotations

import hmac
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from coordinator_stub.core import Coordinator
from coordinator_stub.stores.file import JsonStore
from tests.integration.cli_support import aq, clean_env
from tests.stubutil import STUB_ARGV, running_stub, stub_env
from tests.webutil import call_app

TOKEN = "tok-9c1b7e2f-never-show-me"


def _modes(root: Path) -> list[str]:
    """Paths under ``root`` whose permissions are wider than 0600 (files) / 0700 (dirs)."""
    wide = []
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.lstat().st_mode)
        if mode & 0o077:
            wide.append(f"{p.relative_to(root)} {oct(mode)}")
    return wide


def test_token_reaches_no_file_output_or_tool_env(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = clean_env(AQ_FLEET_TOKEN=TOKEN)
    dump = tmp_path / "tool-env.txt"
    spec = {"id": "envdump", "tool": "shell",
            "command": [sys.executable, "-c",
                        f"import os,sys; t='\\n'.join(f'{{k}}={{v}}' for k,v in os.environ.items()); "
                        f"print(t); open({str(dump)!r},'w').write(t)"]}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec), env=env).returncode == 0
    out = aq(root, "-v", "run", "--drain", "--poll", "0.05", env=env)
    assert out.returncode == 0, out.stderr
    st = aq(root, "status", "--json", env=env)
    assert st.returncode == 0
    assert TOKEN not in out.stdout + out.stderr + st.stdout + st.stderr
    assert dump.exists() and "AQ_" not in dump.read_text(), "an AQ_* variable reached the tool"
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert _modes(root) == [], "state/log files must be 0600 and dirs 0700"


def test_coordinator_state_is_private_and_token_free(tmp_path: Path) -> None:
    state = tmp_path / "coord"
    with running_stub(state, token=TOKEN) as stub:
        h = stub.headers()
        requests.post(stub.url + "/v1/fleet/jobs", json={"id": "a", "tool": "shell", "command": ["true"]},
                      headers=h, timeout=10).raise_for_status()
        lease = requests.post(stub.url + "/v1/fleet/claim", json={"factoryId": "f1"}, headers=h, timeout=10).json()
        requests.post(stub.url + "/v1/fleet/jobs/a/report", headers=h, timeout=10,
                      json={"factoryId": "f1", "leaseEpoch": lease["lease"]["leaseEpoch"], "outcome": "shipped"})
        bad = requests.get(stub.url + "/v1/fleet/status", headers={"Authorization": "Bearer " + TOKEN[:-1]},
                           timeout=10)
        assert bad.status_code == 401 and TOKEN[:-1] not in bad.text
    assert _modes(state) == []
    assert not [p for p in state.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert TOKEN not in "\n".join(stub.stderr_lines)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_non_loopback_bind_without_token_is_refused(tmp_path: Path, host: str) -> None:
    proc = subprocess.run([*STUB_ARGV, "--state", str(tmp_path / "c"), "serve", "--host", host, "--port", "0"],
                          env=stub_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "AQ_FLEET_TOKEN" in proc.stderr


def test_token_compare_is_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator_stub.web.app import build_app
    from coordinator_stub.web.options import ServeOptions
    from coordinator_stub.web.runner import StoreRunner

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("coordinator_stub.web.auth.hmac.compare_digest", spy)
    runner = StoreRunner()
    app = build_app(Coordinator(JsonStore(tmp_path / "c"), lambda: 1e9, 60), ServeOptions(),
                    {"AQ_FLEET_TOKEN": TOKEN}, runner, tmp_path / "c")
    try:
        assert call_app(app, "GET", "/v1/fleet/status", {"Authorization": "Bearer nope"})[0] == 401
        assert call_app(app, "GET", "/v1/fleet/status", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        runner.close()
    assert len(calls) == 2, "every token check goes through hmac.compare_digest"

"""The fleet token out of a tool's reach (issue #19): a real daemon, a tool that looks for it.

The daemon reads its token from ``AQ_FLEET_TOKEN_FILE``, drops the token
variables from its environment and (Linux) makes itself non-dumpable before any
tool starts. The tool then looks in its own environment and in
``/proc/<pid>/environ`` of every ancestor (the daemon among them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli_support import aq, clean_env

TOKEN = "aqf_0123456789ab_never-reachable-by-a-tool"
LOOK = """
import json, os, sys
seen = {"env": dict(os.environ), "proc": {}}
pid = os.getppid()
while pid > 1:
    try:
        seen["proc"][pid] = open(f"/proc/{pid}/environ", "rb").read().decode("latin-1")
    except OSError as exc:
        seen["proc"][pid] = f"DENIED {exc.errno}"
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
open(sys.argv[1], "w").write(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_tool_finds_no_token_in_its_env_nor_in_proc(tmp_path: Path) -> None:
    """The token comes from a file: the daemon's initial environment (which /proc shows, and which no process
    can change) holds only the path, its live environment not even that. Under any uid but root, /proc of the
    non-dumpable daemon is refused outright (root reads it through CAP_SYS_PTRACE)."""
    token_file = tmp_path / "fleet-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    root, found = tmp_path / "root", tmp_path / "found.json"
    env = clean_env(AQ_FLEET_TOKEN_FILE=str(token_file))
    spec = {"id": "look", "tool": "shell", "command": [sys.executable, "-c", LOOK, str(found)]}
    assert aq(root, "enqueue", "-", stdin=json.dumps(spec), env=env).returncode == 0
    out = aq(root, "run", "--drain", "--poll", "0.05", env=env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(found.read_text())
    assert not any(k.startswith("AQ_FLEET_TOKEN") for k in seen["env"])
    daemon = str(json.loads((root / ".state" / "daemon.json").read_text())["pid"])
    assert daemon in seen["proc"], f"the daemon {daemon} is not among the tool's ancestors"
    assert all(TOKEN not in text for text in seen["proc"].values())
    if os.geteuid() != 0:
        assert seen["proc"][daemon].startswith("DENIED")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_make_undumpable_really_clears_the_flag() -> None:
    probe = ("import ctypes; from agent_queue.hardening import make_undumpable; ok = make_undumpable(); "
             "print(ok, ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))")  # 3: PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["True", "0"]


def test_a_token_file_that_is_missing_or_empty_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (tmp_path / "missing", empty):
        out = aq(tmp_path / "root", "status", env=clean_env(AQ_FLEET_TOKEN_FILE=str(path)))
        assert out.returncode == 2 and "AQ_FLEET_TOKEN_FILE" in out.stderr and str(path) in out.stderr

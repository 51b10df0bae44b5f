"""The fleet token out of a tool's reach (issue #19): a real daemon, a tool that looks for it.

The daemon reads its token from ``AQ_FLEET_TOKEN_FILE``, drops the token
variables from its environment and (Linux) makes itself non-dumpable before any
tool starts. The tool then looks in its own environment and in
``/proc/<pid>/environ`` of every ancestor (the daemon among them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter may live under a home that another uid cannot enter
RUNTIME = ("agent_queue", "click", "filelock", "requests", "urllib3", "idna", "certifi", "charset_normalizer")


def _world_readable_runtime(into: Path) -> Path:
    """agent_queue and its run-time dependencies where any uid can import them (a copy, removed with ``into``)."""
    import importlib

    lib = into / "lib"
    for name in RUNTIME:
        origin = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(origin, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return lib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
@pytest.mark.skipif(os.geteuid() != 0, reason="starts the daemon as another uid: needs root (CI runs as root)")
@pytest.mark.skipif(shutil.which("setpriv") is None or not Path(SYSTEM_PYTHON).exists(),
                    reason="needs setpriv (util-linux) and /usr/bin/python3")
def test_a_tool_under_the_daemons_unprivileged_uid_finds_no_token_anywhere() -> None:
    """The deployment docs/deploy.md advises, for real: the daemon runs as an unprivileged uid and the
    service manager (root) hands it the token from a root-owned file. A tool under the daemon's uid
    then finds the token neither in its environment, nor in /proc/<daemon>/environ (non-dumpable: EACCES),
    nor in the token file (root's, 0600). Under root the /proc check proves nothing (CAP_SYS_PTRACE)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="aq-uid-", dir="/tmp"))
    try:
        lib = _world_readable_runtime(base)
        token_file = base / "fleet-token"  # root's, 0600: what the service manager reads
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        work = base / "work"
        work.mkdir()
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        found, root = work / "found.json", work / "root"
        look = LOOK.replace("open(sys.argv[1], \"w\")",
                            "seen['file'] = _read(sys.argv[2])\nopen(sys.argv[1], \"w\")")
        look = "def _read(p):\n    try:\n        return open(p).read()\n    except OSError as e:\n" \
               "        return f'DENIED {e.errno}'\n" + look
        spec = {"id": "look", "tool": "shell", "command": [SYSTEM_PYTHON, "-c", look, str(found), str(token_file)]}
        as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                     SYSTEM_PYTHON, "-m", "agent_queue", "--root", str(root)]
        env = clean_env(PYTHONPATH=str(lib), HOME=str(work), AQ_FLEET_TOKEN=token_file.read_text().strip())
        enq = subprocess.run([*as_nobody, "enqueue", "-"], input=json.dumps(spec), capture_output=True,
                             text=True, timeout=60, env=env, cwd=work)
        assert enq.returncode == 0, enq.stderr
        out = subprocess.run([*as_nobody, "run", "--drain", "--poll", "0.05"], capture_output=True, text=True,
                             timeout=120, env=env, cwd=work)
        assert out.returncode == 0, out.stderr
        seen = json.loads(found.read_text())
        daemon = str(json.loads((root / ".state" / "daemon.json").read_text())["pid"])
        assert not any(k.startswith("AQ_FLEET_TOKEN") for k in seen["env"])
        assert seen["proc"][daemon].startswith("DENIED"), "the daemon's /proc environ was readable by its tool"
        assert seen["file"].startswith("DENIED")
        assert TOKEN not in json.dumps(seen) and TOKEN not in out.stdout + out.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)

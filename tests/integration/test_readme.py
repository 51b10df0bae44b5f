"""The README's Quickstart and composite example run exactly as written (issue 17)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cli_support import clean_env, status

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
VENV_BIN = Path(sys.executable).parent


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def indented_block_after(text: str, marker: str) -> list[str]:
    """The indented (4 spaces) code block that follows the line containing ``marker``."""
    lines = text[text.index(marker):].splitlines()[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    block = []
    for line in lines:
        if not line.startswith("    "):
            break
        block.append(line[4:].split("  #", 1)[0].rstrip())
    return block


def run_shell(lines: list[str], cwd: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """Run the lines with bash, in ``cwd``: `source .venv/bin/activate` activates this test's own venv."""
    script = "\n".join(f"source {VENV_BIN / 'activate'}" if line == "source .venv/bin/activate" else line
                       for line in lines)
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=clean_env(AQ_ROOT=str(root), HOME=str(root.parent)))


def test_quickstart_says_how_to_reach_the_commands_and_its_commands_run(tmp_path: Path) -> None:
    quick = section("Quickstart")
    assert ".venv/bin/agent-queue" in quick and "source .venv/bin/activate" in quick
    block = indented_block_after(quick, "(the queue lives in")
    assert block[0] == "source .venv/bin/activate" and len(block) > 3
    assert (VENV_BIN / "activate").is_file() and (VENV_BIN / "agent-queue").is_file()
    root = tmp_path / "queue"
    out = run_shell(block, tmp_path, root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert status(root)["counts"]["shipped"] == 1
    assert "job hello  shipped" in out.stdout  # show


def test_the_composite_example_runs_as_written(tmp_path: Path) -> None:
    comp = section("Composite jobs")
    spec = re.search(r"```json\n(.*?)```", comp, re.S)
    assert spec is not None
    (tmp_path / "epic.json").write_text(spec.group(1))
    block = indented_block_after(comp, "```\n\n")
    assert block[0] == "agent-queue enqueue epic.json"
    root = tmp_path / "queue"
    out = run_shell([f"export PATH={VENV_BIN}:$PATH", *block], tmp_path, root)
    assert out.returncode == 0, out.stdout + out.stderr
    (roll,) = status(root)["composites"]
    assert roll["state"] == "shipped" and roll["verify"] == "passed"
    assert "composite: epic shipped (shipped 2, verify passed)" in out.stdout

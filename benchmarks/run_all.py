"""Run every benchmark script (B1..B10) in order, then print the report table.

The scripts run as users run the product: in a venv of their own (a temporary
directory) with a regular, non-editable install of this tree's wheel and its
runtime extras, built once per run. The development venv's editable install
adds its own finder to every start-up, which would inflate the floors (B1's
``python -c pass``) and hide what our imports cost. ``--python PY`` runs them
with an interpreter that already has the package installed instead (no build).

``--smoke`` runs tiny sizes (part of ``make test``: proves the scripts run and
write well-formed JSON, measures nothing). ``--out DIR`` picks the results
directory (default benchmarks/results). Each script is its own process, so
one figure's imports and memory never colour the next.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPTS = ["b1_seam.py", "b2_http.py", "b3_history.py", "b4_e2e.py", "b5_idle.py", "b6_failover.py",
           "b7_fairness.py", "b8_pg_http.py", "b9_claim_depth.py", "b10_pickup.py"]
SOURCES = ["pyproject.toml", "README.md", "agent_queue", "coordinator_stub", "scripts"]
NOT_RUNTIME = {"test", "dev"}  # extras for developers; every other extra is a runtime feature a figure may need


def runtime_extras() -> list[str]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    return sorted(set(extras) - NOT_RUNTIME)


def build_user_venv(tmp: Path) -> str:
    """A fresh venv under ``tmp`` with this tree installed from a wheel (as ``pip install`` does); its python.

    The sources are copied first: building in place would leave ``build/`` in the
    working tree, and a stale ``build/lib`` could put deleted modules in the wheel.
    """
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    extras = ",".join(runtime_extras())
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"{src}[{extras}]" if extras else str(src)], check=True)
    return python


def run(python: str, argv: list[str], cwd: Path) -> list[str]:
    """Every script under ``python``, in ``cwd`` (not the tree: ``-m`` would import the sources); the failed."""
    failed = []
    for script in SCRIPTS:
        res = subprocess.run([python, str(HERE / script), *argv], cwd=cwd, check=False)
        if res.returncode != 0:
            failed.append(script)
    return failed


def main(argv: list[str]) -> int:
    python = None
    if "--python" in argv:
        i = argv.index("--python")
        python, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    if "--out" in argv:  # the scripts run in another directory
        i = argv.index("--out") + 1
        argv[i] = str(Path(argv[i]).resolve())
    with tempfile.TemporaryDirectory(prefix="aq-bench-") as tmp:
        if python is None:
            python = build_user_venv(Path(tmp))
        print(f"benchmarks run with {python}", flush=True)
        failed = run(python, argv, Path(tmp))
    out = argv[argv.index("--out") + 1] if "--out" in argv else str(HERE / "results")
    subprocess.run([sys.executable, str(HERE / "report.py"), "--out", out], check=False)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

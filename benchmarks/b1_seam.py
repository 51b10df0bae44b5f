"""B1: one coordinator operation through the command seam, against ``python -c pass`` and ``python -I -S -c pass``.

Each cycle enqueues nothing new (jobs are enqueued up front, in-process), then
times three seam processes, ``claim``, ``renew`` and ``report``, each a fresh
``coordinator-stub --state DIR call`` process as the fleet client runs it, and
two floors of the same venv: ``python -c pass`` (start-up with ``site``, as
the console script pays it) and ``python -I -S -c pass`` (the interpreter
alone), interleaved so drift hits all alike. Also records which watched
modules each path imports (``PYTHONPROFILEIMPORTTIME`` on the console
scripts, as users start them): the seam must import neither click nor
requests, and ``agent-queue --help`` must not import requests.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HEAVY = ("requests", "click", "filelock", "urllib3", "typing", "dataclasses", "pathlib", "urllib", "ipaddress")


def imported(argv: list[str], stdin: bytes = b"") -> list[str]:
    """Top-level modules of HEAVY that ``argv`` imports (its ``-X importtime`` report)."""
    res = subprocess.run(argv, input=stdin, capture_output=True, env=common.bench_env(PYTHONPROFILEIMPORTTIME="1"),
                         check=False)
    names = set()
    for line in res.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return sorted(n for n in HEAVY if n in names)


def main() -> None:
    args = common.parse_args(__doc__)
    cycles = 3 if args.smoke else 30
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "stub"
        common.enqueue_true(state, cycles)
        floor: list[float] = []
        bare: list[float] = []
        ops: dict[str, list[float]] = {"claim": [], "renew": [], "report": []}
        for _ in range(cycles):
            floor += common.timed(lambda: subprocess.run([common.PYTHON, "-c", "pass"], check=True), 1)
            bare += common.timed(lambda: subprocess.run([common.PYTHON, "-I", "-S", "-c", "pass"], check=True), 1)
            t0 = time.perf_counter()
            status, view = common.seam_call(state, "POST", "/v1/fleet/claim", {"factoryId": "b1"})
            ops["claim"].append(time.perf_counter() - t0)
            assert status == 200, (status, view)
            lease = view["lease"]
            job_path = f"/v1/fleet/jobs/{lease['jobId']}"
            fence = {"factoryId": "b1", "leaseEpoch": lease["leaseEpoch"]}
            t0 = time.perf_counter()
            status, _ = common.seam_call(state, "POST", job_path + "/renew", fence)
            ops["renew"].append(time.perf_counter() - t0)
            assert status == 200
            t0 = time.perf_counter()
            status, _ = common.seam_call(state, "POST", job_path + "/report",
                                         {**fence, "outcome": "shipped", "detail": {}})
            ops["report"].append(time.perf_counter() - t0)
            assert status == 200
        seam_imports = imported([common.STUB, "--state", str(state), "call", "GET", "/v1/fleet/healthz"])
    help_imports = imported([common.AQ, "--help"])
    all_ops = [x for v in ops.values() for x in v]
    fl, bf, op = common.summary(floor), common.summary(bare), common.summary(all_ops)
    headline = {"seam_ms": round(op["median"] * 1e3, 1), "floor_ms": round(fl["median"] * 1e3, 1),
                "ratio": common.ratio(op["median"], fl["median"]), "bare_floor_ms": round(bf["median"] * 1e3, 1),
                "ratio_bare": common.ratio(op["median"], bf["median"]), "target": "<= 1.5"}
    common.save(args.out, "b1_seam", {
        "headline": headline, "floor_s": fl, "bare_floor_s": bf, "op_s": op,
        "per_op_s": {k: common.summary(v) for k, v in ops.items()},
        "seam_heavy_imports": seam_imports, "help_heavy_imports": help_imports,
        "seam_imports_click_or_requests": any(m in seam_imports for m in ("click", "requests")),
        "help_imports_requests": "requests" in help_imports,
    }, args.smoke)


if __name__ == "__main__":
    main()

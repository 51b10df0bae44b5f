"""Where no PostgreSQL answers, the PostgreSQL tests skip with the reason; AQ_REQUIRE_PG=1 makes that a failure.

Runs a real pytest on one PostgreSQL test with the DSN pointing at a port
nothing listens on: the guard `.ci/run` relies on must be able to fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEAD = "postgresql://postgres@127.0.0.1:1/postgres"


def run(require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AQ_REQUIRE_PG", "AQ_TEST_PG_DSN")}
    env["AQ_TEST_PG_DSN"] = DEAD
    if require:
        env["AQ_REQUIRE_PG"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/unit/test_coordinator.py::test_enqueue_is_idempotent_and_conflicts_on_different_spec"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_without_a_server_the_postgres_variant_skips_with_the_reason() -> None:
    out = run(require=False)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 1 skipped" in out.stdout  # the memory variant ran; the PostgreSQL one said why not
    assert f"PostgreSQL tests skipped: no server answers at {DEAD}" in out.stdout


def test_with_aq_require_pg_the_skip_is_a_failure() -> None:
    out = run(require=True)
    assert out.returncode == 1, out.stdout
    assert "PostgreSQL is required here (AQ_REQUIRE_PG=1)" in out.stdout

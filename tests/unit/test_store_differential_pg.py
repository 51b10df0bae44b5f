"""Differential: PgStore (two instances on one database, as two ``serve`` replicas) against MemoryStore.

The random operations of ``test_store_differential`` (leaf and composite jobs,
re-enqueue, claims with request ids, renew, release, report with right and
wrong epochs, requeue, reaping by time jumps, get, list, status) run on both;
every answer must be equal, and every ten steps the full listing and status.
At the end the history versions and the event log must be equal too.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from test_store_differential import World, norm

from tests.pgutil import inspect_store, need_psycopg, reset

need_psycopg()
from coordinator_stub.stores import postgres  # noqa: E402

pytestmark = pytest.mark.postgres


def pg_run(url: str, tmp_path: Path, seed: int, steps: int) -> None:
    reset(url)
    rng = random.Random(seed)
    w = World(tmp_path / f"unused{seed}", rng)
    replicas = [inspect_store(url), inspect_store(url)]
    try:
        for step in range(steps):
            name, fn = w.gen_op()
            if fn is None:
                w.t += rng.choice([1.0, 6.0, 11.0, 25.0])
                continue
            st = rng.choice(replicas)
            w.log.append(f"{step}: {name} on replica {replicas.index(st)}")
            res = w.run_on(w.coord(st), fn)
            exp = w.run_on(w.coord(w.mem), fn)
            assert res == exp, f"seed {seed} step {step}: {name}: pg {res} != mem {exp}\n" + "\n".join(w.log[-30:])
            w.note(name, res[1] if res[0] == "ok" else None)
            if step % 10 == 0:
                assert w.fingerprint(w.coord(rng.choice(replicas))) == w.fingerprint(w.coord(w.mem)), \
                    f"seed {seed} step {step}: fingerprints differ\n" + "\n".join(w.log[-30:])
        assert w.fingerprint(w.coord(replicas[0])) == w.fingerprint(w.coord(w.mem))
        assert norm(replicas[0].history) == norm(w.mem.history)
        assert norm(replicas[0].events) == norm(w.mem.events)
        assert norm(replicas[0].shadow_reports) == norm(w.mem.shadow_reports)
        assert norm(replicas[1].hot) == norm(w.mem.hot)
    finally:
        for st in replicas:
            st.close()


@pytest.mark.parametrize("seed", range(int(os.environ.get("FUZZ_SEEDS_PG", "8"))))
def test_fuzz_pg_against_memory(pg_database: str, tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "CLAIM_BATCH", 1 + seed % 3)  # the claim reads the queue in several batches
    pg_run(pg_database, tmp_path, 5000 + seed, int(os.environ.get("FUZZ_STEPS", "200")))

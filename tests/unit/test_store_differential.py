"""Differential: JsonStore (several instances on one directory, as serve and seam processes) against MemoryStore.

Random operations (leaf and composite jobs, re-enqueue, claims with request ids,
renew, release, report, requeue, reaping by time jumps) run on both; every answer
and, every ten steps, the full listing and status must agree. Random checkpoints,
a small checkpoint threshold, small archive batches and a small spec cache make
every path of the store run. One long-lived store defers its bookkeeping to
``tidy`` as ``serve``'s does, tidied after most operations and at random times
(also after other stores wrote). The crash variant kills the operation at the K-th
write, rename, unlink, truncate or sync (before it, after it, or with half a
write done): the files must then read as exactly the state before or after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_queue.errors import AQError
from coordinator_stub.core import Coordinator
from coordinator_stub.stores import file as file_store
from coordinator_stub.stores import file_tx
from coordinator_stub.stores.file import JsonStore
from coordinator_stub.stores.job_files import archive_name
from coordinator_stub.stores.locking import flock
from coordinator_stub.stores.memory import MemoryStore


class Crash(BaseException):
    pass


def norm(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True))


def clone_mem(m: MemoryStore) -> MemoryStore:
    import copy

    c = MemoryStore()
    c.hot = copy.deepcopy(m.hot)
    c.archive = copy.deepcopy(m.archive)
    c.history = copy.deepcopy(m.history)
    c.specs = copy.deepcopy(m.specs)
    return c


OS_CALLS = ("write", "replace", "rename", "unlink", "truncate", "fsync", "fdatasync", "sync")


class Injector:
    def __init__(self) -> None:
        self.count = 0
        self.kill_at = 0
        self.when = "before"
        self.fired = False
        self.real = {n: getattr(os, n) for n in OS_CALLS if hasattr(os, n)}

    def install(self) -> None:
        for name, real in self.real.items():
            setattr(os, name, self._wrap(name, real))

    def uninstall(self) -> None:
        for name, real in self.real.items():
            setattr(os, name, real)

    def _wrap(self, name: str, real: Any) -> Any:
        def step(*args: Any, **kw: Any) -> Any:
            if self.fired or self.kill_at == 0:
                return real(*args, **kw)
            self.count += 1
            if self.count == self.kill_at:
                if self.when == "before":
                    self.fired = True
                    raise Crash(name)
                if self.when == "torn" and name == "write" and len(args[1]) > 2:
                    self.fired = True
                    real(args[0], bytes(args[1])[: len(args[1]) // 2])
                    raise Crash(name)
                real(*args, **kw)
                self.fired = True
                raise Crash(name)
            return real(*args, **kw)

        return step


class World:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.t = 1_000_000.0
        self.mem = MemoryStore()
        self.js = long_lived(root)
        self.ids: list[str] = []
        self.held: list[tuple[str, str, int]] = []
        self.n = 0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.t

    def coord(self, store: Any) -> Coordinator:
        return Coordinator(store, self.clock, 10.0)

    # ---- ops: each is a function of a coordinator returning a normalised result
    def gen_op(self) -> tuple[str, Any]:
        r = self.rng
        kind = r.choices(
            ["leaf", "comp", "reenq", "claim", "act", "requeue", "get", "list", "tick", "status"],
            [10, 3, 2, 14, 14, 4, 3, 1, 3, 1])[0]
        if kind == "leaf":
            self.n += 1
            jid = f"j{self.n}"
            self.ids.append(jid)
            spec = {"id": jid, "command": ["true"], "prompt": "p" * r.randint(0, 50) + jid,
                    "priority": r.randint(0, 2), "budget": {"maxAttempts": r.randint(1, 2)}}
            if r.random() < 0.3 and len(self.ids) > 1:
                spec["dependsOn"] = [r.choice(self.ids[:-1])]
            return f"enqueue {jid}", lambda c: c.enqueue(spec)
        if kind in ("comp", "reenq"):
            if kind == "reenq":
                comps = [i for i in self.ids if i.startswith("c")]
                if not comps:
                    return self.gen_op()
                cid = r.choice(comps)
            else:
                self.n += 1
                cid = f"c{self.n}"
                self.ids += [cid, f"{cid}-a", f"{cid}-b"]
            spec = {"id": cid, "kind": "composite", "verify": ["make", cid], "budget": {"maxAttempts": 2},
                    "children": [{"id": f"{cid}-a", "command": ["a"], "budget": {"maxAttempts": 1}},
                                 {"id": f"{cid}-b", "command": ["b"], "dependsOn": [f"{cid}-a"],
                                  "budget": {"maxAttempts": 1}}]}
            return f"enqueue {cid}", lambda c: c.enqueue(spec)
        if kind == "claim":
            f = r.choice(["f1", "f2", "f3"])
            rid = r.choice([None, "r1", "r2"])
            return f"claim {f} {rid}", lambda c: self._claim(c, f, rid)
        if kind == "act" and self.held:
            jid, f, ep = r.choice(self.held)
            if r.random() < 0.15:
                ep += r.choice([-1, 1])
            op = r.choice(["renew", "release", "release-noretry", "ship", "quar", "ship", "ship"])
            if op == "renew":
                return f"renew {jid} {f} {ep}", lambda c: c.renew(jid, f, ep)
            if op.startswith("release"):
                return f"{op} {jid} {f} {ep}", lambda c: c.release(jid, f, ep, "r", retry=op == "release")
            out = "shipped" if op == "ship" else "quarantined"
            return f"report {jid} {f} {ep} {out}", lambda c: c.report(jid, f, ep, out, {"durationS": 1})
        if kind == "requeue" and self.ids:
            jid = r.choice(self.ids)
            return f"requeue {jid}", lambda c: c.requeue(jid)
        if kind == "get" and self.ids:
            jid = r.choice(self.ids)
            return f"get {jid}", lambda c: c.get_job(jid)
        if kind == "list":
            return "list", lambda c: c.list_jobs()
        if kind == "tick":
            return "tick", None
        if kind == "status":
            return "status", lambda c: c.status()
        return self.gen_op()

    def _claim(self, c: Coordinator, f: str, rid: str | None) -> Any:
        return c.claim(f, ["x"], request_id=rid)

    def note(self, name: str, res: Any) -> None:
        if name.startswith("claim") and isinstance(res, dict) and res.get("lease"):
            lease = res["lease"]
            self.held.append((lease["jobId"], lease["factoryId"], lease["leaseEpoch"]))
            self.held = self.held[-12:]

    def run_on(self, coord: Coordinator, fn: Any) -> Any:
        try:
            return ("ok", norm(fn(coord)))
        except AQError as exc:
            return ("err", type(exc).__name__)

    def fingerprint(self, coord: Coordinator) -> Any:
        return norm([coord.list_jobs(), coord.status()])


@contextlib.contextmanager
def unmeasured(path: Path) -> Iterator[None]:
    """The store's lock, minus telling its transactions of stalls: MemoryStore cannot measure one, and a hold
    over 1 s on a busy machine (a checkpoint's sync) would move leases on one side only (tested elsewhere)."""
    with flock(path):
        yield None


def json_store(root: Path, tidy_later: bool = False) -> JsonStore:
    """``tidy_later``: as ``serve`` builds it (bookkeeping after the answer, commits grouped into shared syncs)."""
    return JsonStore(root, lock=unmeasured, tidy_later=tidy_later, group_commit=tidy_later)


def long_lived(root: Path) -> list[JsonStore]:
    """Two long-lived stores: ``serve``'s (its bookkeeping waits for ``tidy``) and an embedded daemon's."""
    return [json_store(root, tidy_later=True), json_store(root)]


def maybe_tidy(st: JsonStore, rng: random.Random) -> None:
    """``serve`` tidies after each answer; sometimes another store writes first (the tidy must then skip)."""
    if rng.random() < 0.7:
        st.tidy()


def pick_store(w: World) -> JsonStore:
    r = w.rng.random()
    if r < 0.4:
        return w.js[0]
    if r < 0.8:
        return w.js[1]
    return json_store(w.root)  # a seam process


def one_run(tmp_path: Path, seed: int, steps: int, crashes: bool) -> None:
    rng = random.Random(seed)
    root = tmp_path / f"s{seed}"
    w = World(root, rng)
    inj = Injector()
    for step in range(steps):
        name, fn = w.gen_op()
        if fn is None:
            w.t += rng.choice([1.0, 6.0, 11.0, 25.0])
            continue
        if rng.random() < 0.15:
            w.js[0].tidy()  # late: other stores may have written since its last operation
        if rng.random() < 0.08:
            st = pick_store(w)
            w.log.append(f"checkpoint {id(st) % 1000}")
            st.checkpoint()
        st = pick_store(w)
        w.log.append(f"{step}: {name} on {id(st) % 1000}")
        crash_now = crashes and rng.random() < 0.12
        if crash_now:
            before = clone_mem(w.mem)
            inj.count, inj.kill_at, inj.fired = 0, rng.randint(1, 12), False
            inj.when = rng.choice(["before", "after", "torn"])
            inj.install()
            try:
                res = w.run_on(w.coord(st), fn)
                maybe_tidy(st, rng)
                crashed = False
            except Crash as c:
                crashed = True
                w.log.append(f"   crashed at {inj.kill_at} {inj.when} {c}")
            finally:
                inj.uninstall()
                inj.kill_at = 0
            if crashed:
                # the process died: its in-memory stores are gone
                w.js = long_lived(root)
                after = clone_mem(before)
                res_mem = w.run_on(w.coord(after), fn)
                got = w.fingerprint(w.coord(json_store(root)))
                before, after = clone_mem(before), clone_mem(after)  # the fingerprint's reaper changes them
                fb = w.fingerprint(w.coord(before))
                fa = w.fingerprint(w.coord(after))
                if got == fa:
                    w.mem = after
                    w.note(name, res_mem[1] if res_mem[0] == "ok" else None)
                elif got == fb:
                    w.mem = before
                else:
                    raise AssertionError(f"seed {seed} step {step}: state after crash is neither before nor after\n"
                                         + "\n".join(w.log[-30:]) + f"\njson={got}\nbefore={fb}\nafter={fa}")
                continue
        else:
            res = w.run_on(w.coord(st), fn)
            maybe_tidy(st, rng)
        exp = w.run_on(w.coord(w.mem), fn)
        if res != exp:
            raise AssertionError(f"seed {seed} step {step}: {name}: json {res} != mem {exp}\n" + "\n".join(w.log[-30:]))
        w.note(name, res[1] if res[0] == "ok" else None)
        if step % 10 == 0:
            a = w.fingerprint(w.coord(pick_store(w)))
            b = w.fingerprint(w.coord(w.mem))
            if a != b:
                import difflib
                d = "\n".join(difflib.unified_diff(json.dumps(b, indent=1, sort_keys=True).splitlines(),
                                                   json.dumps(a, indent=1, sort_keys=True).splitlines(),
                                                   "mem", "json", n=8))
                recent = "\n".join(w.log[-30:])
                raise AssertionError(f"seed {seed} step {step}: fingerprints differ\n{recent}\n{d}")
    # final: a fresh store after a checkpoint agrees
    json_store(root).checkpoint()
    assert w.fingerprint(w.coord(json_store(root))) == w.fingerprint(w.coord(w.mem))
    json_store(root).checkpoint()
    assert (root / "journal.jsonl").stat().st_size == 0
    # and after the journal is gone, every archive file exists for every archived id
    for job_id in w.mem.archive:
        assert (root / "archive").joinpath(archive_name(job_id)).exists(), job_id


def small_limits(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Checkpoints, caches and batches small enough that every path of the store runs."""
    monkeypatch.setattr(file_store, "CHECKPOINT_MIN_BYTES", 3000)
    monkeypatch.setattr(file_store, "KEPT_CHECKPOINT_FACTOR", 1)
    monkeypatch.setattr(file_tx, "SPEC_CACHE_MAX", 5)
    monkeypatch.setattr(file_store, "MATERIALIZE_BATCH", 1 + seed % 4)
    monkeypatch.setattr(file_store, "TIDY_FILES", 1 + seed % 3)


@pytest.mark.parametrize("seed", range(int(os.environ.get("FUZZ_SEEDS", "20"))))
def test_fuzz_no_crash(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    small_limits(monkeypatch, seed)
    one_run(tmp_path, seed, int(os.environ.get("FUZZ_STEPS", "200")), crashes=False)


@pytest.mark.parametrize("seed", range(int(os.environ.get("FUZZ_SEEDS", "20"))))
def test_fuzz_crash(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    small_limits(monkeypatch, seed)
    one_run(tmp_path, 1000 + seed, int(os.environ.get("FUZZ_STEPS", "200")), crashes=True)

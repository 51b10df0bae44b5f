"""What the demo prints: notes as they happen, one verdict per guarantee with its evidence, the timeline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

ORDER = ("a", "b", "b'", "c")


class Timeline:
    """What happened when, from the demo's side and the coordinator's; printed at the end."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.rows: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def note(self, who: str, text: str, at: float | None = None, echo: bool = True) -> None:
        at = time.time() if at is None else at
        with self._lock:
            self.rows.append((at, who, text))
        if echo:
            print(f"  [{at - self.t0:6.2f}s] {who:<11} {text}", flush=True)

    def print(self, extra: list[tuple[float, str, str]]) -> None:
        print("\nTimeline (seconds since start):")
        for at, who, text in sorted([*self.rows, *extra]):
            print(f"  {at - self.t0:6.2f}  {who:<11} {text}")


@dataclass
class Verdict:
    """One guarantee: PASS only if every check held; each check leaves a line of evidence."""

    key: str
    title: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.ok = False
        self.lines.append("FAIL: " + text)

    def show(self, text: str) -> None:
        """Evidence that is neither a pass nor a fail."""
        self.lines.append("      " + text)

    def check(self, ok: bool, text: str) -> None:
        self.lines.append(("ok:   " if ok else "FAIL: ") + text)
        self.ok = self.ok and ok


def print_results(verdicts: list[Verdict]) -> None:
    print("\nResults:")
    for v in sorted(verdicts, key=lambda v: ORDER.index(v.key)):
        print(f"{'PASS' if v.ok else 'FAIL'} ({v.key}) {v.title}")
        for line in v.lines:
            print(f"    {line}")

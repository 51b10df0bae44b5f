"""Running the story: knobs, temp dir, exit codes, and clean-up that holds on failure, Ctrl-C and SIGTERM.

Exit 0 when every guarantee holds, 1 when one fails (or the coordinator
cannot be reached), 2 for a setup error, 130 on Ctrl-C or SIGTERM. Every
process the demo started is stopped and reaped, and the temp dir removed
unless AQ_DEMO_KEEP=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .api import ApiError
from .fleet import Fleet
from .knobs import DemoError, read_knobs
from .processes import followed

NAME = "two-factory-demo"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(story: Callable[[Fleet], bool]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        knobs = read_knobs(os.environ)
    except DemoError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="aq-two-factory-"))
    fleet: Fleet | None = None
    code = 1
    try:
        fleet = Fleet(knobs, base, os.environ)
        with followed(fleet.factories, knobs.verbose):
            ok = story(fleet)
        print(f"\n{'ALL GUARANTEES HOLD' if ok else 'SOME GUARANTEE FAILED'} "
              f"({time.time() - fleet.timeline.t0:.1f}s)")
        code = 0 if ok else 1
    except DemoError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        code = 2
    except ApiError as exc:
        print(f"{NAME}: coordinator error: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"\n{NAME}: interrupted, stopping everything", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if fleet is not None:
            fleet.close()
        if knobs.keep:
            print(f"kept (AQ_DEMO_KEEP=1): {base}  (factories: {base}/mac-1, {base}/ubuntu-1; "
                  f"coordinator: {base}/coordinator; markers: {base}/markers)")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return code

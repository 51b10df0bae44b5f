"""Process checks shared by the tests (imported as ``tests.procutil``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def alive(pid: int | None) -> bool:
    """Running: a zombie waiting for its reaper does not count (checked where /proc exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True

"""Keeping the fleet token out of the tools' reach (issue #19).

A tool is third-party code reading third-party text (a prompt-injected agent is
the threat to plan for), and runs under the daemon's uid. Two holes closed here,
once, at daemon start, before any tool starts:

- ``os.environ`` of the daemon: the token variables are removed, so nothing the
  daemon starts (tool, verify, ship hook, git) can inherit them by accident.
- ``/proc/<daemon>/environ`` shows the *initial* environment, which no process
  can change. On Linux the daemon makes itself non-dumpable
  (``prctl(PR_SET_DUMPABLE, 0)``): the kernel then gives its /proc files to
  root and refuses ptrace from the same uid. Elsewhere this is skipped (macOS
  has no /proc; its ptrace needs entitlements).

Root is not stopped by either: run the daemon as a dedicated unprivileged user
(docs/deploy.md).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import MutableMapping

SECRET_ENV = ("AQ_FLEET_TOKEN", "AQ_FLEET_TOKEN_FILE")
_PR_SET_DUMPABLE = 4  # linux/prctl.h


def drop_secrets(environ: MutableMapping[str, str]) -> list[str]:
    """Remove the token variables (``os.environ`` also unsets them in the C environment); the names removed."""
    return [name for name in SECRET_ENV if environ.pop(name, None) is not None]


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on Linux; False where it is not available or refused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False

"""Entry point of ``coordinator-stub``: the seam's fast path first, click for everything else.

``call`` runs once per coordinator operation as a fresh process, so it is
parsed by hand here and never imports click (see ``seam.fast_main``).
"""

from __future__ import annotations

import gc
import os
import sys


def main(exit_at_once: bool = False) -> None:
    """Run ``coordinator-stub``; ``exit_at_once`` (the installed script): a seam call ends with ``os._exit``.

    A seam call is a short process, one operation and out, timed against
    ``python -c pass`` by benchmark B1: it runs without the cyclic garbage
    collector (nothing it builds lives past the call; ~0.7 ms), and, started
    from the installed script, leaves without the interpreter's teardown once
    its answer is written and flushed and its store closed (~2.5 ms). Anything
    else (``serve``, the click commands) runs with the collector and exits as usual.
    """
    gc.disable()
    from coordinator_stub.seam import fast_main

    code = fast_main(sys.argv[1:], os.environ)
    if code is None:
        gc.enable()
        from coordinator_stub.cli import main as cli_main

        code = cli_main()
    elif exit_at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()

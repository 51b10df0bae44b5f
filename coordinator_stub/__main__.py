"""Entry point of ``coordinator-stub``: the seam's fast path first, click for everything else.

``call`` runs once per coordinator operation as a fresh process, so it is
parsed by hand here and never imports click (see ``seam.fast_main``).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from coordinator_stub.seam import fast_main

    code = fast_main(sys.argv[1:], os.environ)
    if code is None:
        from coordinator_stub.cli import main as cli_main

        code = cli_main()
    sys.exit(code)


if __name__ == "__main__":
    main()

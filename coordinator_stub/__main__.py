"""Entry point of ``coordinator-stub``."""

from __future__ import annotations

import sys


def main() -> None:
    print("coordinator-stub: not implemented yet", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()

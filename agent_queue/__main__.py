"""Entry point of ``agent-queue``; keeps start-up cheap (no requests unless needed)."""

from __future__ import annotations

import sys


def main() -> None:
    from agent_queue.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()

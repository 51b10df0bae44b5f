"""Command line of agent-queue (placeholder until the core lands)."""

from __future__ import annotations


def main() -> int:
    return 0

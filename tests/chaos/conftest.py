"""Options of the chaos suite: ``--chaos-long`` (make chaos: 200 jobs, 5 factories) and ``--chaos-figures``."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos")
    group.addoption("--chaos-long", action="store_true", default=False,
                    help="Run the long chaos schedule (200 jobs, 5 factories).")
    group.addoption("--chaos-figures", default=None, metavar="PATH",
                    help="Also write the run's figures (JSON) to PATH, for docs/reliability.md.")

"""Daemon logging: one line per event on stderr, as text or JSON, with job/factory/attempt fields.

Call sites log with ``extra={"job_id": ..., "attempt": ...}``; the factory id
is stamped on every record by a filter. ``--log-format`` picks the formatter
only, never the call sites.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

FIELDS = (("job_id", "jobId"), ("factory_id", "factoryId"), ("attempt", "attempt"), ("epoch", "leaseEpoch"))
_STD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class _FactoryFilter(logging.Filter):
    def __init__(self, factory_id: str) -> None:
        super().__init__()
        self.factory_id = factory_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "factory_id"):
            record.factory_id = self.factory_id
        return True


class TextFormatter(logging.Formatter):
    """``2024-...Z INFO  shipped job=a factory=f attempt=1 exitCode=0``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        parts = [f"{stamp} {record.levelname:<7} {record.getMessage()}"]
        for attr, key in FIELDS:
            value = getattr(record, attr, None)
            if value is not None:
                parts.append(f"{key.replace('Id', '')}={value}")
        parts.extend(f"{k}={v}" for k, v in _extras(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for attr, key in FIELDS:
            value = getattr(record, attr, None)
            if value is not None:
                out[key] = value
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    known = {attr for attr, _ in FIELDS}
    return {k: v for k, v in vars(record).items() if k not in _STD and k not in known and not k.startswith("_")}


def setup(log_format: str, verbose: bool, factory_id: str, stream: TextIO | None = None) -> None:
    """Install the one stderr handler on the package logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_FactoryFilter(factory_id))
    logger = logging.getLogger("agent_queue")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False

"""Logging set-up: text for people, JSON lines for log pipelines, and a rate-limited logger.

Configured once by the root command. ``--log-level`` and ``LOG_LEVEL`` win over the
config file's ``logging`` section.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from pricectl.core.loggate import LogGate

__all__ = ["JsonFormatter", "RateLimitedLog", "setup_logging"]

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger on stderr (``fmt``: ``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("websockets", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RateLimitedLog:
    """Log a recurring problem at most once per ``interval`` seconds per key, with a count
    of the repeats held back (the decision is :class:`pricectl.core.loggate.LogGate`'s)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.gate = LogGate(interval)
        self._clock = clock

    def warning(self, key: str, msg: str, *args: object) -> None:
        """Warn about ``key`` unless it was warned about within the interval."""
        if not self.gate.allow(key, self._clock()):
            return
        repeats = self.gate.take_suppressed(key)
        suffix = f" (and {repeats} more since last report)" if repeats else ""
        self.logger.warning(msg + suffix, *args)

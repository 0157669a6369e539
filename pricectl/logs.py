"""Logging set-up: text for people, JSON lines for log pipelines, escaping, and rate limits.

Configured once by the root command. ``--log-level`` and ``LOG_LEVEL`` win over the
config file's ``logging`` section.

Two rules hold for every line, whoever logged it (our code, aiohttp, redis-py):

- **One record, one line.** A client controls the path, the query and the headers of
  its request; a path such as ``/x%0a06:00:00 CRITICAL pricectl.relay: FORGED`` must not
  become a second, forged line, nor a NUL or an ANSI escape sequence reach the
  terminal of whoever reads the log. :func:`escape` writes every control character as
  a visible escape (``\\n``, ``\\x1b``), and the text formatter applies it to every
  message; a traceback's lines after the first are indented, so no line of it can pass
  for a record of its own. (JSON lines are safe by construction: ``json.dumps``
  escapes control characters.) Code that puts client input into a message escapes it
  itself as well, so it stays safe under someone else's logging set-up.
- **No secret.** Every message, traceback and extra field passes through the one
  redaction rule (:func:`pricectl.core.redaction.redact`), so a Redis password in a URL
  is written as ``***`` even by a library that logs the URL it was given.

A problem that can recur many times a second (a client's malformed requests, accept
failing for want of file descriptors) is logged through :class:`RateLimitedLog`: one
line per cause per interval, with a count of the repeats held back.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from pricectl.core.loggate import LogGate
from pricectl.core.redaction import redact

__all__ = ["JsonFormatter", "RateLimitedLog", "TextFormatter", "escape", "setup_logging"]

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators and the
# bidirectional overrides (which reorder what a terminal shows).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    ch = match[0]
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object, limit: int = 0) -> str:
    """``text`` with every control character written as a visible escape, on one line.

    ``limit`` (when above 0) cuts the result to that many characters, marking the cut
    with ``...``: a client's 100 KB header must not become a 100 KB log line.
    """
    out = _CONTROL.sub(_escape_one, str(text))
    if limit and len(out) > limit:
        out = out[: max(0, limit - 3)] + "..."
    return out


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message``: one line per record, escaped and redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = redact(escape(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        text = redact(super().formatException(ei))
        return "\n".join("  " + escape(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("  " + escape(line) for line in redact(stack_info).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=lambda v: redact(str(v)))


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger on stderr (``fmt``: ``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("websockets", "aiohttp.access", "asyncio", "httpx", "httpcore", "hpack"):
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

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg`` about ``key`` at ``level`` unless ``key`` was logged within the
        interval; True when the line went out."""
        if not self.gate.allow(key, self._clock()):
            return False
        repeats = self.gate.take_suppressed(key)
        suffix = f" (and {repeats} more since last report)" if repeats else ""
        self.logger.log(level, msg + suffix, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> None:
        """Warn about ``key`` unless it was warned about within the interval."""
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> None:
        """Say ``msg`` about ``key`` at info level unless said within the interval."""
        self.log(logging.INFO, key, msg, *args)

"""Log set-up: the rate-limited logger, one line per record (escaped), no secret in any line."""

from __future__ import annotations

import json
import logging

import pytest

from pricectl.logs import JsonFormatter, RateLimitedLog, TextFormatter, escape


def test_repeats_are_held_back_and_counted_on_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within the interval a key is warned about once; the next line counts the repeats."""
    now = [0.0]
    rlog = RateLimitedLog(logging.getLogger("pricectl.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pricectl.test"):
        rlog.warning("bus", "publish failed: %s", "down")
        now[0] = 5.0
        rlog.warning("bus", "publish failed: %s", "down")
        rlog.warning("rest", "poll failed")
        rlog.warning("bus", "publish failed: %s", "down")
        now[0] = 10.0
        rlog.warning("bus", "publish failed: %s", "still down")
    assert caplog.messages == [
        "publish failed: down",
        "poll failed",
        "publish failed: still down (and 2 more since last report)",
    ]


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("pricectl.access", logging.INFO, __file__, 1, msg, args, exc_info)


def test_text_lines_cannot_be_forged_or_carry_escapes() -> None:
    """CR, LF, NUL and ANSI escapes in a message are written as visible escapes, so a
    client's path makes one line, never a forged second one."""
    path = "/x\n06:00:00 CRITICAL pricectl.relay: FORGED\r\x00\x1b[31m\u2028"
    line = TextFormatter().format(_record("GET %s 404", path))
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\\n06:00:00 CRITICAL pricectl.relay: FORGED\\r\\x00\\x1b[31m\\u2028 404" in line


def test_a_traceback_never_starts_a_line_of_its_own() -> None:
    """Every line of a traceback is indented under its record, whatever the error says."""
    try:
        raise ValueError("bad\n06:00:00 CRITICAL pricectl.relay: FORGED")
    except ValueError as exc:
        text = TextFormatter().format(_record("failed", exc=exc))
    first, *rest = text.splitlines()
    assert first.endswith("pricectl.access: failed")
    assert rest and all(line.startswith("  ") for line in rest)


def test_both_formats_redact_passwords_everywhere() -> None:
    """Message, extra fields and traceback lose the password in text and JSON lines."""
    url = "redis://:hunter2@127.0.0.1:6379/0?password=hunter2"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError as exc:
        record = _record("bus %s", url, exc=exc)
    record.bus = url
    for formatter in (TextFormatter(), JsonFormatter()):
        record.exc_text = None
        out = formatter.format(record)
        assert "hunter2" not in out and "***" in out
    doc = json.loads(JsonFormatter().format(record))
    assert doc["bus"] == "redis://:***@127.0.0.1:6379/0?password=***"


def test_escape_cuts_long_text() -> None:
    """escape() with a limit keeps a 100 KB header from becoming a 100 KB line."""
    assert escape("a" * 100_000, 20) == "a" * 17 + "..."
    assert escape("ok\tfine") == "ok\\tfine"

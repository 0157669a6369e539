"""``pricectl tail``: read one hop of the pipeline and show it (the command is only glue).

Sources: ``serve`` (the SSE stream, :class:`~pricectl.client.sse.SSEClient`), ``redis``
(the bus, :func:`~pricectl.client.sources.bus_events`), ``binance`` (the exchange,
:func:`~pricectl.client.sources.exchange_events`). Modes: ``table`` (rich live board,
the default on a terminal), ``plain`` (one line per update, the default when piped),
``json`` (one update object per line, docs/protocol.md, "The update object").

Only new information is printed: duplicates of a replay and snapshot repeats after a
reconnect are dropped (and counted); a resync or gap is marked on its line. Connection
events go to stderr in ``plain``/``json`` mode, so stdout stays one update per line.

Stops after ``count`` updates, after ``duration`` seconds, after the snapshot with
``once``, or on Ctrl-C (the command exits 130 then, the shell convention for SIGINT).

The ``table`` mode draws with a :class:`TableView` the command passes in (the console's
rich board): the console belongs to the commands, so this module never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from pricectl.client.events import (
    Clock,
    Connected,
    Disconnected,
    Notice,
    Price,
    Stale,
    StreamEvent,
)
from pricectl.client.views import Board, event_line, json_line, plain_line
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.sequence import Check, SequenceStats, SequenceTracker, Verdict
from pricectl.errors import BusError, PricectlError, UsageError

__all__ = ["SOURCES", "LiveView", "TableView", "TailOptions", "TailResult", "run_tail"]

SOURCES = ("serve", "redis", "binance")

#: With ``--once``: how long to wait for pairs that have no snapshot yet.
ONCE_WAIT_S = 2.0


@dataclass(frozen=True)
class TailOptions:
    """Everything ``tail`` needs, resolved from the command line and the settings."""

    pairs: tuple[str, ...]
    source: str = "serve"
    url: str = "http://127.0.0.1:8000"
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = ""
    mode: str = "plain"
    once: bool = False
    count: int | None = None
    duration: float | None = None
    stale_after: float = 30.0
    idle_timeout: float = 45.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


class LiveView(Protocol):
    """A drawing of the board that stays on screen while it is entered."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...

    def refresh(self) -> None:
        """Draw the board now (it changed)."""


@dataclass(frozen=True)
class TableView:
    """How the ``table`` mode draws: ``live(board)`` while streaming, ``once(board, now)``
    for the ``once`` snapshot."""

    live: Callable[[Board], LiveView]
    once: Callable[[Board, float], None]


@dataclass
class TailResult:
    """What happened, for the exit code and the closing summary line."""

    printed: int = 0
    reconnects: int = 0
    exit_code: int = 0
    stats: SequenceStats | None = None

    def summary(self) -> str:
        """``tail: 20 updates, 1 reconnect, 0 gaps, 0 duplicates dropped, 0 resyncs``."""
        s = self.stats or SequenceStats()
        parts = [
            _count(self.printed, "update"),
            _count(self.reconnects, "reconnect"),
            _count(s.gaps, "gap"),
            _count(s.duplicates, "duplicate") + " dropped",
            _count(s.resyncs, "resync"),
        ]
        return "tail: " + ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _hint(opts: TailOptions) -> str:
    if opts.source == "serve":
        return (
            f"is `pricectl serve` running at {opts.url}? start it, point --url at it, "
            "or use --from binance"
        )
    if opts.source == "redis":
        return "is redis-server running there? check --redis or bus.url (REDIS_URL)"
    return "check exchange.ws_url (BINANCE_WS_URL), or start `pricectl simulate`"


def _open(opts: TailOptions, settings: Any, tracker: SequenceTracker) -> AsyncIterator[StreamEvent]:
    if opts.source == "serve":
        from pricectl.client.sse import SSEClient

        client = SSEClient(
            opts.url,
            opts.pairs,
            backoff=Backoff(opts.backoff),
            idle_timeout=opts.idle_timeout,
            fail_fast=True,
        )
        client.tracker = tracker
        return _closing(client.events(), client.close)
    if opts.source == "redis":
        from pricectl.client.sources import bus_events

        return bus_events(opts.redis_url, opts.pairs, prefix=opts.prefix, tracker=tracker)
    if opts.source == "binance":
        from pricectl.client.sources import exchange_events

        return exchange_events(settings, opts.pairs, tracker=tracker)
    raise UsageError(f"unknown source {opts.source!r}; expected one of {', '.join(SOURCES)}")


async def _closing(events: AsyncIterator[StreamEvent], close: Any) -> AsyncIterator[StreamEvent]:
    try:
        async for event in events:
            yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
        await close()


class _Writer:
    """Prints events in the chosen text mode; stdout for updates, stderr for the rest."""

    def __init__(self, mode: str, out: TextIO, err: TextIO) -> None:
        self.mode = mode
        self.out = out
        self.err = err

    def price(self, price: Price) -> None:
        line = json_line(price) if self.mode == "json" else plain_line(price)
        self.out.write(line + "\n")
        self.out.flush()

    def status(self, event: Connected | Disconnected | Notice | Stale | Clock) -> None:
        self.err.write(event_line(event) + "\n")
        self.err.flush()


async def run_tail(
    opts: TailOptions,
    settings: Any,
    *,
    result: TailResult | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    table: TableView | None = None,
) -> TailResult:
    """Run ``tail`` until a stop condition; raises ``PricectlError`` (with a hint) on failure.

    Pass ``result`` to keep the counts when the run is interrupted (Ctrl-C), and
    ``table`` to draw with in the ``table`` mode (it needs one).
    """
    if opts.mode == "table" and table is None:
        raise ValueError("the table mode draws with a TableView: pass table=")
    out = out or sys.stdout
    err = err or sys.stderr
    tracker = SequenceTracker()
    board = Board(opts.pairs, source=_label(opts), stale_after=opts.stale_after)
    board.stats = tracker.stats
    result = result if result is not None else TailResult()
    result.stats = tracker.stats
    writer = _Writer(opts.mode, out, err)
    live: LiveView | None = None
    if table is not None and opts.mode == "table" and not opts.once:
        live = table.live(board)
    events = _open(opts, settings, tracker)
    try:
        with _quiet_logs(opts), live if live is not None else contextlib.nullcontext():
            await _pump(opts, events, board, writer, result, live)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except BusError as exc:
        from pricectl.bus.failures import explain

        raise PricectlError(explain(opts.redis_url or "", exc)) from None
    except UsageError:
        raise
    except PricectlError as exc:
        raise PricectlError(f"{exc}; {_hint(opts)}") from None
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]
    if opts.once:
        _print_snapshot(opts, board, writer, result, table)
    return result


async def _pump(
    opts: TailOptions,
    events: AsyncIterator[StreamEvent],
    board: Board,
    writer: _Writer,
    result: TailResult,
    live: LiveView | None,
) -> None:
    loop_start = time.monotonic()
    deadline = loop_start + opts.duration if opts.duration is not None else None
    once_deadline: float | None = None
    pending = set(opts.pairs)
    iterator = events.__aiter__()
    while True:
        limit = deadline
        if once_deadline is not None:
            limit = once_deadline if limit is None else min(limit, once_deadline)
        try:
            if limit is None:
                event = await iterator.__anext__()
            else:
                async with asyncio.timeout(max(0.0, limit - time.monotonic())):
                    event = await iterator.__anext__()
        except (StopAsyncIteration, TimeoutError):
            return
        now = time.monotonic()
        board.apply(event, now)
        if isinstance(event, Clock):
            continue  # folded into the board's clock offset; nothing to print
        if isinstance(event, Price):
            if not event.deliver:
                continue
            if opts.once:
                pending.discard(event.update.pair)
                # serve and the bus send every snapshot before any live update; the
                # exchange sends no snapshot, so wait there for each pair's first price.
                if not pending or (not event.snapshot and opts.source != "binance"):
                    return
                continue
            result.printed += 1
            if live is not None:
                live.refresh()
            else:
                writer.price(event)
            if opts.count is not None and result.printed >= opts.count:
                return
        else:
            if isinstance(event, (Connected, Disconnected)):
                result.reconnects = event.reconnects
            if isinstance(event, Connected) and opts.once and once_deadline is None:
                once_deadline = now + ONCE_WAIT_S
            if live is None and not opts.once:
                writer.status(event)
            elif live is not None:
                live.refresh()


def _print_snapshot(
    opts: TailOptions,
    board: Board,
    writer: _Writer,
    result: TailResult,
    table: TableView | None,
) -> None:
    """``--once``: print each pair's latest update; exit 1 if no pair had one."""
    missing = [p for p in opts.pairs if board.rows[p].update is None]
    if table is not None and opts.mode == "table":
        table.once(board, time.monotonic())
    else:
        for pair in opts.pairs:
            update = board.rows[pair].update
            if update is not None:
                writer.price(Price(update=update, check=Check(Verdict.FIRST), snapshot=True))
    result.printed = len(opts.pairs) - len(missing)
    if missing:
        writer.err.write(f"no price yet for {', '.join(missing)}\n")
        writer.err.flush()
        if len(missing) == len(opts.pairs):
            result.exit_code = 1


@contextlib.contextmanager
def _quiet_logs(opts: TailOptions) -> Iterator[None]:
    """Keep library log lines from tearing the live table (the board shows the connection
    state instead) and from repeating our own status lines in plain/JSON mode."""
    name, level = ("pricectl", logging.ERROR) if opts.mode == "table" else ("", 0)
    if opts.mode != "table" and opts.source == "binance":
        name, level = "pricectl.exchange", logging.WARNING
    if not name:
        yield
        return
    logger = logging.getLogger(name)
    before = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _label(opts: TailOptions) -> str:
    if opts.source == "serve":
        return f"serve {opts.url}"
    if opts.source == "redis":
        from pricectl.config import redact_url

        return f"redis {redact_url(opts.redis_url)}"
    return "binance"

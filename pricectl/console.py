"""Rich output for people at a terminal: the one module that imports rich.

Keeping rich here (and importing this module only inside commands that draw) keeps
``pricectl --help`` fast and lets the text/JSON paths of ``tail`` and ``health`` run
without it. What is drawn comes from plain data: :class:`pricectl.client.views.Board`
for the live table, the health document (docs/protocol.md, "Health") for the summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pricectl.client.views import Board, Row, short_decimal, sparkline

__all__ = [
    "LiveBoard",
    "LoadtestProgress",
    "error_console",
    "print_board",
    "print_health",
    "print_through",
    "render_board",
]

_SOURCE_STYLE = {"ws": "bold green", "rest": "bold yellow", "cache": "bold red"}
_STATUS_STYLE = {"ok": "bold green", "degraded": "bold yellow", "down": "bold red"}
_STATE_STYLE = {"live": "green", "connecting": "yellow", "reconnecting": "bold red"}


def error_console(file: TextIO | None = None) -> Console:
    """A console on stderr for errors and status lines."""
    return Console(file=file or sys.stderr, highlight=False)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def _change(row: Row) -> Text:
    u = row.update
    if u is None or u.change_pct is None:
        return Text("-", style="dim")
    pct = u.change_pct
    negative = pct.startswith("-")
    shown = pct if negative or pct.startswith("+") else "+" + pct
    return Text(shown + "%", style="red" if negative else "green")


def _price(row: Row) -> Text:
    u = row.update
    if u is None:
        return Text("waiting…", style="dim")
    arrow = {1: " ▲", -1: " ▼", 0: "  "}[row.direction()]
    style = {1: "bold green", -1: "bold red", 0: "bold"}[row.direction()]
    return Text(short_decimal(u.price) + arrow, style=style)


def render_board(board: Board, now: float) -> Group:
    """The live table: one row per pair, then the connection line."""
    table = Table(expand=False, header_style="bold")
    table.add_column("pair", no_wrap=True)
    table.add_column("price", justify="right", no_wrap=True)
    table.add_column("24h", justify="right", no_wrap=True)
    table.add_column("bid / ask", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("src", no_wrap=True)
    table.add_column("trend", no_wrap=True, min_width=20)
    for pair in board.pairs:
        row = board.rows[pair]
        u = row.update
        stale = row.is_stale(now, board.stale_after)
        bidask = (
            "-"
            if u is None or u.bid is None
            else f"{short_decimal(u.bid)} / {short_decimal(u.ask)}"
        )
        src = Text("-", style="dim")
        if u is not None:
            src = Text(f" {u.source.upper()} ", style=_SOURCE_STYLE.get(u.source, "bold"))
            if stale:
                src.append(" STALE", style="bold white on red")
        table.add_row(
            Text(pair, style="bold"),
            _price(row),
            _change(row),
            Text(bidask, style="dim" if stale else ""),
            Text(_age(row.age(now)), style="red" if stale else ""),
            src,
            Text(sparkline(list(row.history)), style="cyan"),
        )
    state = Text(f"● {board.state}", style=_STATE_STYLE.get(board.state, ""))
    state.append(f"  {board.source}", style="dim")
    state.append(f"  reconnects: {board.reconnects}")
    if board.stats is not None:
        st = board.stats
        state.append(f"  gaps: {st.gaps}  duplicates dropped: {st.duplicates}")
    if board.last_problem:
        state.append(f"\n  last: {board.last_problem}", style="yellow")
    return Group(table, state)


def print_board(board: Board, now: float, console: Console | None = None) -> None:
    """The board once, without live updates (``tail --once`` on a terminal)."""
    (console or Console()).print(render_board(board, now))


class LiveBoard:
    """A rich Live display redrawing :func:`render_board` four times a second (ages tick).

    Use as a context manager; ``refresh()`` after a change draws it at once.
    """

    def __init__(
        self,
        board: Board,
        clock: Callable[[], float] = time.monotonic,
        console: Console | None = None,
    ) -> None:
        self.board = board
        self._clock = clock
        self._live = Live(
            console=console or Console(),
            get_renderable=lambda: render_board(self.board, self._clock()),
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveBoard:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def refresh(self) -> None:
        """Redraw now."""
        self._live.refresh()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "-"
    return str(value)


#: What the summary shows of the (large) upstream status; the full object is in --json.
_UPSTREAM_KEYS = (
    "state",
    "breaker",
    "last_frame_age_s",
    "ws.connected",
    "ws.url",
    "ws.reconnects",
    "rest.weight_used",
    "published",
    "publish_errors",
)


def _flat(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars of ``value`` and of its nested mappings one level down, as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            if not prefix:
                out.update(_flat(v, f"{k}."))
        elif not isinstance(v, (list, tuple)):
            out[prefix + str(k)] = v
    return out


def _section(title: str, value: Any) -> Text:
    text = Text(f"{title:<9}", style="bold")
    if isinstance(value, Mapping):
        flat = _flat(value)
        if title == "upstream" and any(k in flat for k in _UPSTREAM_KEYS):
            flat = {k: flat[k] for k in _UPSTREAM_KEYS if k in flat}
        text.append("  ".join(f"{k}={_fmt(v)}" for k, v in flat.items()))
    else:
        text.append(_fmt(value))
    return text


def print_health(health: Mapping[str, Any], console: Console | None = None) -> None:
    """The health document (docs/protocol.md) as a short summary: status, pairs, then each
    part."""
    out = console or Console()
    status = str(health.get("status", "unknown"))
    head = Text("status   ", style="bold")
    head.append(status.upper(), style=_STATUS_STYLE.get(status, "bold"))
    where = health.get("origin")
    if where:
        head.append(f"  ({where})", style="dim")
    out.print(head)
    if health.get("simulated"):
        out.print(
            Text("  SIMULATED prices from the local exchange (serve --simulate)", style="bold")
        )
    for problem in health.get("reasons", []) or []:
        out.print(Text(f"  ! {problem}", style="yellow"))
    pairs = health.get("pairs")
    if isinstance(pairs, Mapping) and pairs:
        table = Table(pad_edge=False, header_style="bold", box=None)
        table.add_column("pair")
        table.add_column("age", justify="right")
        table.add_column("source")
        table.add_column("stale")
        for pair, info in pairs.items():
            info = info if isinstance(info, Mapping) else {}
            age = info.get("age_s", info.get("age"))
            src = str(info.get("source") or "-")
            stale = bool(info.get("stale"))
            table.add_row(
                pair,
                _age(float(age)) if isinstance(age, (int, float)) else "-",
                Text(src, style=_SOURCE_STYLE.get(src, "")),
                Text("STALE", style="bold red") if stale else Text("no", style="green"),
            )
        out.print(table)
    for key in ("leader", "upstream", "bus", "clients", "version"):
        if key in health:
            out.print(_section(key, health[key]))


def print_through(report: Mapping[str, Any], console: Console | None = None) -> None:
    """The proxy check: a plain verdict, then the numbers behind it."""
    out = console or Console()
    buffers = report.get("buffers")
    over = f" ({report['http_version']})" if report.get("http_version") else ""
    verdict = Text("proxy    ", style="bold")
    if buffers is None:
        verdict.append("COULD NOT CHECK the stream through the proxy", style="bold yellow")
    elif buffers:
        verdict.append(f"BUFFERS the stream{over}", style="bold red")
    else:
        verdict.append(f"passes the stream through unbuffered{over}", style="bold green")
    out.print(verdict)
    out.print(Text(f"         {report.get('summary', '')}"))


class LoadtestProgress:
    """``pricectl loadtest``'s live line on stderr: connected/target, events/s, p99, errors.

    ``update(progress)`` takes a :class:`pricectl.loadtest.runner.Progress` (any object
    with those attributes); use as a context manager.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._text = Text("starting…")
        self._live = Live(
            self._text,
            console=console or error_console(),
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LoadtestProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, p: Any) -> None:
        """Redraw from the latest progress figures."""
        text = Text(f"{p.phase:<6} ", style="bold cyan")
        style = "green" if p.connected >= p.target else "yellow"
        text.append(f"connected {p.connected}/{p.target}", style=style)
        text.append(f"  {p.events_per_s:,.0f} events/s  p99 {p.p99_ms:.1f} ms")
        text.append(f"  errors {p.failed + p.errors}", style="red" if p.failed + p.errors else "")
        if p.window_left:
            text.append(f"  {p.window_left:.0f}s left", style="dim")
        self._live.update(text)

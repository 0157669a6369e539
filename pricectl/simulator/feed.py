"""What the local exchange sends unasked: the random walk's frames, garbage, or a recording.

:class:`Feed` runs the exchange's background loops and hands every frame to the
WebSocket side (:class:`~pricectl.simulator.ws.WebSocketEndpoint`):

* the market loop: the seeded walk of :mod:`pricectl.simulator.market` moves the
  configured symbols and every subscribed one; ``trade``, ``aggTrade`` and
  ``bookTicker`` go out ``trade_rate`` times per symbol per second, ``ticker`` and
  ``miniTicker`` (and ``!miniTicker@arr`` for the symbols that moved) every
  ``ticker_interval`` s. Those are the five kinds of :data:`pricectl.core.binance.KINDS`;
* the garbage loop: with the ``garbage`` fault on, bad frames (not JSON, truncated JSON,
  unknown events, missing fields) to every connection at that rate;
* the replay, instead of the walk: the frames of a recording (:func:`load_recording`),
  from the first connection on, to the connections subscribed to each frame's stream
  (a connection with no subscription gets all), timed as recorded divided by ``speed``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pricectl.simulator import control

if TYPE_CHECKING:
    from pricectl.simulator.market import Market
    from pricectl.simulator.server import Faults, SimulatorConfig
    from pricectl.simulator.ws import WebSocketEndpoint

__all__ = ["GARBAGE", "Feed", "RecordedFrame", "load_recording"]

#: What ``garbage`` sends: not JSON, truncated JSON, unknown events, missing fields.
GARBAGE = (
    "not json at all",
    '{"e":"24hrTicker","E":',
    '{"stream":"btcusdt@ticker","data":',
    '{"e":"mysteryEvent","E":1}',
    "[1,2,3]",
    '{"e":"24hrTicker","E":1,"s":"BTCUSDT"}',
    "\x00\x01\x02",
)


@dataclass(frozen=True)
class RecordedFrame:
    """One recorded frame: its time from the first (s), its stream (None if raw), the
    text for raw connections and the text for combined ones."""

    at: float
    stream: str | None
    raw: str
    combined: str


def load_recording(path: str | Path) -> list[RecordedFrame]:
    """Frames of a ``.jsonl`` recording, timed by its ``.recv_ts.txt`` when present.

    Without the timing file frames are 10 ms apart. Lines keep their exact text: a
    combined-stream line goes out as is to combined connections, and as its ``data``
    re-serialised compactly (byte-identical for Binance frames) to raw ones.
    """
    p = Path(path)
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    ts_path = p.with_name(p.name.removesuffix(".jsonl") + ".recv_ts.txt")
    times: list[float]
    if ts_path.exists():
        times = [float(x) for x in ts_path.read_text().split()]
        if len(times) != len(lines):
            raise ValueError(f"{ts_path}: {len(times)} times for {len(lines)} frames")
    else:
        times = [i * 0.01 for i in range(len(lines))]
    frames = []
    t0 = times[0] if times else 0.0
    for line, t in zip(lines, times, strict=True):
        obj = json.loads(line)
        if isinstance(obj, dict) and "stream" in obj and "data" in obj:
            stream = obj["stream"]
            raw = json.dumps(obj["data"], separators=(",", ":"))
            frames.append(RecordedFrame(t - t0, stream, raw, line))
        else:
            frames.append(RecordedFrame(t - t0, None, line, line))
    return frames


class Feed:
    """The background loops of the exchange; the recording is read at construction."""

    def __init__(
        self, config: SimulatorConfig, faults: Faults, market: Market, ws: WebSocketEndpoint
    ) -> None:
        self.config = config
        self.faults = faults
        self.market = market
        self.ws = ws
        self.recording = load_recording(config.replay) if config.replay else None
        #: Recorded frames played so far, and whether the whole recording has been.
        self.replay_sent = 0
        self.replay_done = False

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """The coroutines to run until the exchange stops: the walk or the replay, and
        the garbage fault."""
        if self.recording is None:
            return [self._market_loop(), self._garbage_loop()]
        return [self._garbage_loop(), self._replay_loop()]

    def replay_state(self) -> dict[str, Any] | None:
        """Replay progress for ``/admin/state`` (None without a recording)."""
        if self.recording is None:
            return None
        return {"sent": self.replay_sent, "total": len(self.recording), "done": self.replay_done}

    def _walking(self) -> list[str]:
        """Symbols the walk advances: the configured ones plus every subscribed one."""
        out = dict.fromkeys(s for s in self.config.symbols if s in self.market)
        for name in self.ws.subscribed():
            symbol = control.stream_symbol(name)
            if symbol is not None and symbol in self.market:
                out[symbol] = None
        return list(out)

    async def _market_loop(self) -> None:
        cfg = self.config
        ws = self.ws
        loop = asyncio.get_running_loop()
        start = loop.time()
        trade_dt = max(0.01, 1.0 / cfg.trade_rate) if cfg.trade_rate > 0 else math.inf
        next_trade = start + trade_dt
        next_ticker = start + cfg.ticker_interval
        trades_done = 0
        while True:
            await asyncio.sleep(max(0.0, min(next_trade, next_ticker) - loop.time()))
            now = loop.time()
            now_ms = time.time_ns() // 1_000_000
            if now >= next_trade:
                due = int((now - start) * cfg.trade_rate) - trades_done
                trades_done += due
                for symbol in self._walking():
                    low = symbol.lower()
                    for _ in range(due):
                        trade, agg, book = self.market.trade(symbol, now_ms)
                        ws.publish(f"{low}@trade", trade)
                        ws.publish(f"{low}@aggTrade", agg)
                        ws.publish(f"{low}@bookTicker", book)
                next_trade += trade_dt
                if next_trade < now:
                    next_trade = now + trade_dt
            if now >= next_ticker:
                for symbol in self._walking():
                    low = symbol.lower()
                    if ws.has_subscribers(f"{low}@ticker"):
                        ws.publish(f"{low}@ticker", self.market.ticker(symbol, now_ms))
                    if ws.has_subscribers(f"{low}@miniTicker"):
                        ws.publish(f"{low}@miniTicker", self.market.mini_ticker(symbol, now_ms))
                changed = self.market.take_changed()
                if changed and ws.has_subscribers("!miniTicker@arr"):
                    ws.publish(
                        "!miniTicker@arr", [self.market.mini_ticker(s, now_ms) for s in changed]
                    )
                next_ticker += cfg.ticker_interval
                if next_ticker < now:
                    next_ticker = now + cfg.ticker_interval

    async def _garbage_loop(self) -> None:
        i = 0
        while True:
            rate = self.faults.garbage
            if rate <= 0:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(1.0 / rate)
            if self.faults.stall:
                continue
            self.ws.broadcast(GARBAGE[i % len(GARBAGE)])
            i += 1

    async def _replay_loop(self) -> None:
        assert self.recording is not None
        await self.ws.connected.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        speed = self.config.speed
        for frame in self.recording:
            if speed > 0:
                delay = start + frame.at / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not self.faults.stall:
                self.ws.send_recorded(frame.stream, frame.raw, frame.combined)
            self.replay_sent += 1
            if speed <= 0 and self.replay_sent % 100 == 0:
                await asyncio.sleep(0)
        self.replay_done = True

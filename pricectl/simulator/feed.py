"""What the local exchange sends unasked: the random walk's frames, garbage, or a recording.

:class:`Feed` runs the exchange's background loops and hands every frame to the
WebSocket side (:class:`~pricectl.simulator.ws.WebSocketEndpoint`):

* the market loop: the seeded walk of :mod:`pricectl.simulator.market` moves the
  configured symbols and every subscribed listed one, nothing else (so the ~1,700
  symbols of the list cost nothing until someone subscribes). Every stream type of
  :data:`pricectl.core.binance.STREAM_TYPES` is fed, and only where it has a
  subscriber: the real-time ones (``trade``, ``aggTrade``, ``bookTicker``, and
  ``blockTrade`` on one trade in :data:`~pricectl.simulator.market.BLOCK_TRADE_EVERY`)
  ``trade_rate`` times per symbol per second; the 1000 ms ones (``ticker``,
  ``miniTicker``, ``ticker_<w>``, ``avgPrice``, ``referencePrice``, ``depth``,
  ``depth<N>``, ``kline_1s``, and ``!miniTicker@arr``/``!ticker_<w>@arr`` for the
  symbols that moved) every ``ticker_interval`` s; the other klines every two
  ``ticker_interval``; the ``@100ms`` depth streams every tenth of one;
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

if TYPE_CHECKING:
    from pricectl.core.binance import Stream
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

    def walking(self) -> list[str]:
        """Symbols the walk advances: the configured ones plus every subscribed listed one."""
        if self.recording is not None:
            return []
        subscribed = self.ws.fed_symbols()
        out = [s for s in self.config.symbols if s in self.market and s not in subscribed]
        out.extend(subscribed)
        return out

    async def _market_loop(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        start = loop.time()
        trade_dt = max(0.01, 1.0 / cfg.trade_rate) if cfg.trade_rate > 0 else math.inf
        fast_dt = cfg.ticker_interval / 10
        next_trade = start + trade_dt
        next_ticker = start + cfg.ticker_interval
        next_fast = start + fast_dt
        trades_done = 0
        tickers_done = 0
        while True:
            wake = min(next_trade, next_ticker)
            if self.ws.wants_period(100):
                wake = min(wake, next_fast)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            now = loop.time()
            # The exchange's clock (skewed by the fault), less the feed's delay fault.
            faults = self.faults
            now_ms = time.time_ns() // 1_000_000 + faults.clock_skew_ms - faults.feed_delay_ms
            if now >= next_trade:
                due = int((now - start) * cfg.trade_rate) - trades_done
                trades_done += due
                self._trades(due, now_ms)
                next_trade += trade_dt
                if next_trade < now:
                    next_trade = now + trade_dt
            if now >= next_fast:
                self._periodic(100, now_ms)
                next_fast += fast_dt
                if next_fast < now:
                    next_fast = now + fast_dt
            if now >= next_ticker:
                tickers_done += 1
                self._periodic(1000, now_ms)
                if tickers_done % 2 == 0:
                    self._periodic(2000, now_ms)
                self._market_wide(now_ms)
                next_ticker += cfg.ticker_interval
                if next_ticker < now:
                    next_ticker = now + cfg.ticker_interval

    def _trades(self, due: int, now_ms: int) -> None:
        """``due`` trades of every walking symbol, and their real-time events."""
        if due <= 0:
            return
        market, publish = self.market, self.ws.publish
        subscribed = self.ws.fed_symbols()
        for symbol in self.walking():
            realtime = [s for s in subscribed.get(symbol, {}).values() if s.period_ms == 0]
            for _ in range(due):
                market.step(symbol, now_ms)
                for stream in realtime:
                    if stream.type == "trade":
                        publish(stream.name, market.trade_event(symbol, now_ms))
                    elif stream.type == "aggTrade":
                        publish(stream.name, market.agg_event(symbol, now_ms))
                    elif stream.type == "bookTicker":
                        publish(stream.name, market.book_ticker(symbol))
                    else:
                        block = market.block_trade(symbol, now_ms)
                        if block is not None:
                            publish(stream.name, block)

    def _periodic(self, period_ms: int, now_ms: int) -> None:
        """The events of every subscribed stream that updates every ``period_ms``."""
        if not self.ws.wants_period(period_ms):
            return
        publish = self.ws.publish
        for symbol, streams in list(self.ws.fed_symbols().items()):
            for stream in list(streams.values()):
                if stream.period_ms != period_ms:
                    continue
                if stream.type == "kline":
                    assert stream.param is not None
                    for event in self.market.kline(symbol, stream.param, stream.utc_offset, now_ms):
                        publish(stream.name, event)
                    continue
                payload = self._payload(stream, symbol, now_ms)
                if payload is not None:
                    publish(stream.name, payload)

    def _payload(self, stream: Stream, symbol: str, now_ms: int) -> dict[str, Any] | None:
        """The event of a periodic per-symbol stream (None: nothing changed to send)."""
        market = self.market
        kind = stream.type
        if kind == "ticker":
            return market.ticker(symbol, now_ms)
        if kind == "miniTicker":
            return market.mini_ticker(symbol, now_ms)
        if kind == "rollingTicker":
            assert stream.param is not None
            return market.rolling_ticker(symbol, stream.param, now_ms)
        if kind == "avgPrice":
            return market.avg_price(symbol, now_ms)
        if kind == "referencePrice":
            return market.reference_price(symbol, now_ms)
        if kind == "partialDepth":
            assert stream.levels is not None
            return market.partial_depth(symbol, stream.levels)
        return market.depth_update(symbol, stream.period_ms, now_ms)

    def _market_wide(self, now_ms: int) -> None:
        """``!miniTicker@arr`` and ``!ticker_<w>@arr``: one array of the symbols that moved."""
        changed = self.market.take_changed()
        if not changed:
            return
        for stream in list(self.ws.market_wide().values()):
            if stream.type == "allMiniTickers":
                events = [self.market.mini_ticker(s, now_ms) for s in changed]
            else:
                assert stream.param is not None
                events = [self.market.rolling_ticker(s, stream.param, now_ms) for s in changed]
            self.ws.publish(stream.name, events)

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

"""Binance Spot REST (aiohttp): the price fallback, the start-up symbol check, weight limits.

Three jobs (Binance's REST API documentation, summed up in docs/binance.md §5):

- :meth:`BinanceRest.fetch_prices`: one request for every pair, on the endpoint that
  matches ``exchange.stream`` so a pair served from REST carries the same fields it has
  on the WebSocket::

      ticker      GET /api/v3/ticker/24hr?symbols=["BTCUSDT","ETHUSDT"]            weight 2
      miniTicker  GET /api/v3/ticker/24hr?symbols=[...]&type=MINI                  weight 2
      bookTicker  GET /api/v3/ticker/bookTicker?symbols=[...]                      weight 4
      aggTrade,
      trade       GET /api/v3/ticker/price?symbols=[...]                           weight 4

  ``symbols`` is compact JSON (``separators=(",", ":")``): Binance validates it with a
  regular expression and rejects spaces with ``-1100``.
- :meth:`BinanceRest.validate_pairs`: ``GET /api/v3/exchangeInfo`` at start-up; a pair
  whose symbol the exchange does not list, or lists as not ``TRADING``, stops start-up
  with an error naming the pair and the symbol it mapped to.
- Weight: every response's ``X-MBX-USED-WEIGHT-1M`` feeds a
  :class:`~pricectl.core.ratelimit.WeightBudget`; a request that would take the minute
  past ``exchange.rest_weight_budget`` is not sent. A 429 or 418 raises
  :class:`~pricectl.errors.RateLimitedError` with its ``Retry-After`` and pauses every
  request until then; a 418 (an IP ban, 2 minutes to 3 days) is logged at error level.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from pricectl.config import ExchangeSettings
from pricectl.core.pairs import PairMap
from pricectl.core.ratelimit import WeightBudget
from pricectl.core.ticks import PriceUpdate
from pricectl.errors import FeedError, RateLimitedError, UnknownPairError

__all__ = ["BinanceRest", "RestStatus", "endpoint_for", "request_weight", "updates_from_response"]

log = logging.getLogger("pricectl.exchange.rest")

#: Weight of ``GET /api/v3/exchangeInfo`` (§5).
EXCHANGE_INFO_WEIGHT = 20

#: Retry-After to assume when a 429/418 comes without a readable header.
_DEFAULT_RETRY_AFTER = 60.0


def endpoint_for(kind: str) -> tuple[str, dict[str, str]]:
    """The REST path and extra query parameters that mirror WS stream ``kind``."""
    if kind == "ticker":
        return "/api/v3/ticker/24hr", {}
    if kind == "miniTicker":
        return "/api/v3/ticker/24hr", {"type": "MINI"}
    if kind == "bookTicker":
        return "/api/v3/ticker/bookTicker", {}
    if kind in ("aggTrade", "trade"):
        return "/api/v3/ticker/price", {}
    raise ValueError(f"unknown stream kind {kind!r}")


def request_weight(path: str, n_symbols: int) -> int:
    """Binance's weight for ``path`` with a ``symbols`` list of ``n_symbols`` (§5)."""
    if path == "/api/v3/ticker/24hr":
        if n_symbols <= 20:
            return 2
        return 40 if n_symbols <= 100 else 80
    if path == "/api/v3/exchangeInfo":
        return EXCHANGE_INFO_WEIGHT
    return 4


def updates_from_response(
    kind: str, body: Any, pair_map: PairMap, recv_ns: int
) -> list[PriceUpdate]:
    """Turn a ``symbols=`` array response into ``source="rest"`` updates, in pair order.

    Decimal strings are copied as received. ``event_ms`` is ``closeTime`` for the 24 h
    endpoints (the end of the statistics window, i.e. "now" on the server) and the local
    receive time for ``price`` and ``bookTicker``, which carry no time. Elements for
    symbols we do not serve, or missing a field, are skipped (and logged).
    """
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list):
        raise FeedError(f"REST {kind}: expected a JSON array, got {type(body).__name__}")
    recv_ms = recv_ns // 1_000_000
    out: list[PriceUpdate] = []
    for item in body:
        if not isinstance(item, dict):
            continue
        symbol = item.get("symbol")
        pair = pair_map.pair_for(symbol) if isinstance(symbol, str) else None
        if pair is None or symbol is None:
            continue
        try:
            out.append(_one(kind, item, pair, symbol, recv_ns, recv_ms))
        except (KeyError, TypeError) as exc:
            log.warning("REST %s: skipped %s: missing or bad field %s", kind, symbol, exc)
    order = {p: i for i, p in enumerate(pair_map.pairs)}
    out.sort(key=lambda u: order[u.pair])
    return out


def _str(item: dict[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _opt(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


def _one(
    kind: str, item: dict[str, Any], pair: str, symbol: str, recv_ns: int, recv_ms: int
) -> PriceUpdate:
    if kind in ("ticker", "miniTicker"):
        close = item.get("closeTime")
        event_ms = close if isinstance(close, int) and not isinstance(close, bool) else recv_ms
        return PriceUpdate(
            pair=pair,
            symbol=symbol,
            price=_str(item, "lastPrice"),
            bid=_opt(item, "bidPrice"),
            ask=_opt(item, "askPrice"),
            open=_opt(item, "openPrice"),
            high=_opt(item, "highPrice"),
            low=_opt(item, "lowPrice"),
            change_pct=_opt(item, "priceChangePercent"),
            volume=_opt(item, "volume"),
            event_ms=event_ms,
            ingest_ns=recv_ns,
            source="rest",
        )
    if kind == "bookTicker":
        bid = _str(item, "bidPrice")
        return PriceUpdate(
            pair=pair,
            symbol=symbol,
            price=bid,
            bid=bid,
            ask=_str(item, "askPrice"),
            event_ms=recv_ms,
            ingest_ns=recv_ns,
            source="rest",
        )
    return PriceUpdate(
        pair=pair,
        symbol=symbol,
        price=_str(item, "price"),
        event_ms=recv_ms,
        ingest_ns=recv_ns,
        source="rest",
    )


def _retry_after(headers: Any) -> float:
    """``Retry-After`` in seconds (Binance sends an integer); a default if unreadable."""
    raw = headers.get("Retry-After")
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        return _DEFAULT_RETRY_AFTER


@dataclass(frozen=True)
class RestStatus:
    """The REST side at one moment (:meth:`BinanceRest.status`)."""

    #: Request weight spent in Binance's current minute, and what we allow ourselves.
    weight_used: int
    weight_budget: int
    #: Seconds until a rate-limit pause (429/418 ``Retry-After``) ends; 0.0 when none.
    paused_for: float
    requests: int
    failures: int
    rate_limited: int
    last_error: str | None


class BinanceRest:
    """A REST client for one relay: ``async with BinanceRest(exchange, pair_map) as rest:``.

    ``exchange`` is the config's exchange section (URL, stream kind, timeout, weight
    budget); ``pair_map`` the pairs asked for when a call names none. ``wall``
    (wall-clock seconds) is injectable for the weight minute; the session is created on
    first use or passed in (then the caller closes it).
    """

    def __init__(
        self,
        exchange: ExchangeSettings,
        pair_map: PairMap,
        *,
        session: aiohttp.ClientSession | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.base = exchange.rest_url.rstrip("/")
        self.kind = exchange.stream
        self.timeout = exchange.rest_timeout
        self.pair_map = pair_map
        self.budget = WeightBudget(exchange.rest_weight_budget)
        self._wall = wall
        self._session = session
        self._own_session = session is None
        #: Requests sent, and those that failed (any reason), for metrics.
        self.requests = 0
        self.failures = 0
        self.rate_limited = 0
        self.last_error: str | None = None

    async def __aenter__(self) -> BinanceRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._own_session = True
        return self._session

    # -- requests ------------------------------------------------------------------------

    async def get(self, path: str, params: dict[str, str] | None, weight: int) -> Any:
        """GET ``path`` within the weight budget; the decoded JSON body.

        Raises :class:`RateLimitedError` (429/418, or our own budget: ``status`` 0)
        without sending while a pause runs, and :class:`FeedError` for anything else
        that is not a 2xx JSON answer.
        """
        wall = self._wall()
        wait = self.budget.wait_time(weight, wall)
        if wait > 0:
            paused = wall < self.budget.paused_until
            why = "Retry-After pause" if paused else "REST weight budget"
            self.rate_limited += 1
            raise RateLimitedError(
                f"REST {path}: not sent, {why} ({self.budget.used_at(wall)}/"
                f"{self.budget.budget} used this minute); retry in {wait:.1f}s",
                status=0,
                retry_after=wait,
            )
        self.budget.charge(weight, wall)
        self.requests += 1
        try:
            async with self._get_session().get(self.base + path, params=params) as resp:
                self._note_weight(resp.headers)
                if resp.status in (429, 418):
                    self._rate_limited(path, resp.status, _retry_after(resp.headers))
                text = await resp.text()
                if resp.status >= 400:
                    raise FeedError(f"REST {path}: HTTP {resp.status}: {text[:200]}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise FeedError(f"REST {path}: {self.last_error}") from exc
        except FeedError as exc:
            self.failures += 1
            self.last_error = str(exc)
            raise
        try:
            return json.loads(text)
        except ValueError as exc:
            self.failures += 1
            self.last_error = f"REST {path}: response is not JSON"
            raise FeedError(self.last_error) from exc

    def _note_weight(self, headers: Any) -> None:
        raw = headers.get("X-MBX-USED-WEIGHT-1M") or headers.get("X-MBX-USED-WEIGHT")
        if raw is not None:
            try:
                self.budget.record_used(int(raw), self._wall())
            except ValueError:
                pass

    def _rate_limited(self, path: str, status: int, retry_after: float) -> None:
        self.budget.pause(retry_after, self._wall())
        self.rate_limited += 1
        if status == 418:
            log.error(
                "REST %s: HTTP 418 - this IP is BANNED by the exchange for %.0fs "
                "(too many requests after 429s); no REST request until the ban ends",
                path,
                retry_after,
            )
        else:
            log.warning("REST %s: HTTP 429 rate limited; pausing REST for %.1fs", path, retry_after)
        raise RateLimitedError(
            f"REST {path}: HTTP {status}, retry after {retry_after:.0f}s",
            status=status,
            retry_after=retry_after,
        )

    # -- the three jobs ------------------------------------------------------------------

    async def fetch_prices(self, pairs: Iterable[str] | None = None) -> list[PriceUpdate]:
        """Current prices of ``pairs`` (default: every pair of ``pair_map``), ``source="rest"``."""
        pair_map = self.pair_map
        wanted = list(pair_map.pairs if pairs is None else pairs)
        if not wanted:
            return []
        symbols = [pair_map.symbol_for(p) for p in wanted]
        path, extra = endpoint_for(self.kind)
        params = {"symbols": json.dumps(symbols, separators=(",", ":")), **extra}
        body = await self.get(path, params, request_weight(path, len(symbols)))
        sub = PairMap.build(wanted, pair_map.aliases)
        return updates_from_response(self.kind, body, sub, time.time_ns())

    async def server_time(self) -> tuple[float, float, float]:
        """``GET /api/v3/time`` (weight 1): ``(sent, server, received)`` in milliseconds,
        ours wall-clock around the exchange's, for :class:`pricectl.core.clock.ClockOffset`."""
        sent = time.time_ns() / 1e6
        body = await self.get("/api/v3/time", None, 1)
        received = time.time_ns() / 1e6
        server = body.get("serverTime") if isinstance(body, dict) else None
        if not isinstance(server, int | float) or isinstance(server, bool):
            raise FeedError("REST time: no serverTime in the response")
        return sent, float(server), received

    async def exchange_info(self) -> dict[str, Any]:
        """``GET /api/v3/exchangeInfo`` (every symbol; weight 20)."""
        body = await self.get("/api/v3/exchangeInfo", None, EXCHANGE_INFO_WEIGHT)
        if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
            raise FeedError("REST exchangeInfo: no symbols list in the response")
        return body

    async def validate_pairs(self, pair_map: PairMap | None = None) -> None:
        """Check every configured pair against the live ``exchangeInfo``.

        Raises :class:`UnknownPairError` listing each pair whose symbol is missing or not
        ``TRADING`` (start-up must stop: that pair would never get a price), and
        :class:`FeedError` if the exchange cannot be asked.
        """
        pair_map = pair_map if pair_map is not None else self.pair_map
        info = await self.exchange_info()
        status = {
            s["symbol"]: s.get("status")
            for s in info["symbols"]
            if isinstance(s, dict) and isinstance(s.get("symbol"), str)
        }
        problems: list[str] = []
        for pair in pair_map.pairs:
            symbol = pair_map.symbol_for(pair)
            if symbol not in status:
                problems.append(
                    f"unknown pair {pair}: the exchange has no symbol {symbol} "
                    f"(checked against {self.base}/api/v3/exchangeInfo)"
                )
            elif status[symbol] != "TRADING":
                problems.append(
                    f"pair {pair}: symbol {symbol} is not trading on the exchange "
                    f"(status {status[symbol]})"
                )
        if problems:
            head = problems[0] if len(problems) == 1 else f"{len(problems)} pairs cannot be served"
            raise UnknownPairError(head, problems)
        log.info("exchangeInfo: all %d pairs are trading", len(pair_map.pairs))

    def status(self) -> RestStatus:
        """REST state for ``/health`` and metrics."""
        wall = self._wall()
        paused = self.budget.paused_until - wall
        return RestStatus(
            weight_used=self.budget.used_at(wall),
            weight_budget=self.budget.budget,
            paused_for=round(paused, 3) if paused > 0 else 0.0,
            requests=self.requests,
            failures=self.failures,
            rate_limited=self.rate_limited,
            last_error=self.last_error,
        )

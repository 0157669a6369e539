"""The local exchange's REST side: the market-data endpoints, request weights and bans.

Endpoints of Binance's Spot REST API
(https://developers.binance.com/docs/binance-spot-api-docs/rest-api), public market data
only: ``/api/v3/ping``, ``time``, ``exchangeInfo``, ``ticker/price``, ``ticker/24hr``
(FULL/MINI), ``ticker/bookTicker`` and ``avgPrice``. ``symbol`` answers an object,
``symbols`` or neither an array; ``-1121`` (HTTP 400) for an unknown symbol, ``-1100``
for a malformed ``symbols``, and the other documented parameter errors.

Each request has its documented weight. Weight is counted per client IP in a wall-clock
window of ``weight_window_s`` (60) against ``weight_limit`` (6000) by a
:class:`pricectl.core.ratelimit.WeightBudget`, the class pricectl's own client keeps its
budget with, and reported in ``X-MBX-USED-WEIGHT-1M``. A request that would go over gets
429 with ``Retry-After`` (the end of the window); ``ban_after`` more of them in the same
window get the IP banned: 418 with ``Retry-After`` for ``ban_s``, whatever it asks.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pricectl.core.ratelimit import WeightBudget
from pricectl.simulator.market import Market

if TYPE_CHECKING:
    from pricectl.simulator.server import Faults, SimulatorConfig, Stats

__all__ = ["RestEndpoint"]

_SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
_SYMBOLS_RE = re.compile(r'^\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}"){0,}){0,1}\]$')
_SYMBOLS_RANGE = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
_STATUSES = ("TRADING", "HALT", "BREAK")

#: What a handler returns: the request's weight and the JSON body.
Handler = Callable[[web.Request], tuple[int, Any]]


class _Client:
    """One client IP: its weight window, its over-budget requests in it, its ban."""

    __slots__ = ("_over_window", "banned_until", "over", "weight")

    def __init__(self, limit: int, window_s: float) -> None:
        self.weight = WeightBudget(limit, window_s)
        self.over = 0
        self._over_window = -math.inf
        #: Monotonic time until which every request gets 418.
        self.banned_until = 0.0

    def count_over(self, wall: float) -> int:
        """One more over-budget request in the window containing ``wall``; the count so far."""
        window = self.weight.window_end(wall)
        if window != self._over_window:
            self._over_window = window
            self.over = 0
        self.over += 1
        return self.over


class RestEndpoint:
    """The REST API of the exchange, with per-IP weights, 429 and 418 bans."""

    def __init__(
        self, config: SimulatorConfig, faults: Faults, stats: Stats, market: Market
    ) -> None:
        self.config = config
        self.faults = faults
        self.stats = stats
        self.market = market
        self._clients: dict[str, _Client] = {}
        self._exchange_symbols: list[dict[str, Any]] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v3/ping", self._rest(self._ping))
        app.router.add_get("/api/v3/time", self._rest(self._time))
        app.router.add_get("/api/v3/exchangeInfo", self._rest(self._exchange_info))
        app.router.add_get("/api/v3/ticker/price", self._rest(self._ticker_price))
        app.router.add_get("/api/v3/ticker/24hr", self._rest(self._ticker_24hr))
        app.router.add_get("/api/v3/ticker/bookTicker", self._rest(self._ticker_book))
        app.router.add_get("/api/v3/avgPrice", self._rest(self._avg_price))

    def _client(self, ip: str) -> _Client:
        client = self._clients.get(ip)
        if client is None:
            cfg = self.config
            client = self._clients[ip] = _Client(cfg.weight_limit, cfg.weight_window_s)
        return client

    def _rest(self, handler: Handler) -> Callable[[web.Request], Any]:
        """Wrap a handler returning ``(weight, body)`` with faults, weights, 429/418."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.stats.rest_requests += 1
            cfg = self.config
            now = time.monotonic()
            wall = time.time()
            client = self._client(request.remote or "?")
            used = client.weight.used_at(wall)
            if client.banned_until > now:
                return self._limit_response(418, used, math.ceil(client.banned_until - now))
            if self.faults.rest500:
                return _json(
                    {"code": -1001, "msg": "Internal error; unable to process your request."},
                    500,
                    used,
                )
            if self.faults.rest418:
                return self._limit_response(418, used, math.ceil(cfg.ban_s))
            if self.faults.rest429:
                return self._limit_response(429, used, cfg.fault_retry_after_s)
            try:
                weight, body = handler(request)
            except _RestError as err:
                weight, body, status = err.weight, {"code": err.code, "msg": err.msg}, err.status
            else:
                status = 200
            if used + weight > cfg.weight_limit:
                if client.count_over(wall) > cfg.ban_after:
                    client.banned_until = now + cfg.ban_s
                    return self._limit_response(418, used, math.ceil(cfg.ban_s))
                window_end = client.weight.window_end(wall)
                return self._limit_response(429, used, math.ceil(window_end - time.time()))
            client.weight.charge(weight, wall)
            return _json(body, status, client.weight.used)

        return wrapped

    def _limit_response(self, status: int, used: int, retry_after: int) -> web.Response:
        limit = self.config.weight_limit
        if status == 418:
            until = time.time_ns() // 1_000_000 + retry_after * 1000
            msg = (
                f"Way too much request weight used; IP banned until {until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                f"Too much request weight used; current limit is {limit} request weight per "
                "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
            )
        resp = _json({"code": -1003, "msg": msg}, status, used)
        resp.headers["Retry-After"] = str(max(1, retry_after))
        return resp

    def _symbol_params(self, request: web.Request) -> list[str] | None:
        """``symbol`` -> [one] (object response), ``symbols`` -> list, neither -> None."""
        q = request.query
        if "symbol" in q and "symbols" in q:
            raise _RestError(400, -1128, "Combination of optional parameters invalid.")
        if "symbol" in q:
            sym = q["symbol"]
            if not _SYMBOL_RE.match(sym):
                raise _RestError(
                    400,
                    -1100,
                    "Illegal characters found in parameter 'symbol'; "
                    "legal range is '^[A-Z0-9-_.]{1,20}$'.",
                )
            if sym not in self.market:
                raise _RestError(400, -1121, "Invalid symbol.")
            return [sym]
        if "symbols" in q:
            text = q["symbols"]
            if not _SYMBOLS_RE.match(text):
                raise _RestError(
                    400,
                    -1100,
                    f"Illegal characters found in parameter 'symbols'; legal range is "
                    f"'{_SYMBOLS_RANGE}'.",
                )
            syms: list[str] = json.loads(text)
            if len(set(syms)) != len(syms):
                raise _RestError(400, -1151, "Symbol is present multiple times in the list.")
            if any(s not in self.market for s in syms):
                raise _RestError(400, -1121, "Invalid symbol.")
            return syms
        return None

    def _status_filter(self, request: web.Request, syms: list[str], single: bool) -> list[str]:
        status = request.query.get("symbolStatus")
        if status is None:
            return syms
        if status not in _STATUSES:
            raise _RestError(400, -1122, "Invalid symbolStatus.")
        kept = [s for s in syms if self.market.specs[s].status == status]
        if single and not kept:
            raise _RestError(
                400, -1220, "The symbol's status does not match the requested symbolStatus."
            )
        return kept

    def _ticker_common(
        self,
        request: web.Request,
        one: Callable[[str], dict[str, Any]],
        weight_1: int,
        weight_n: int,
    ) -> tuple[int, Any]:
        try:
            syms = self._symbol_params(request)
        except _RestError as err:
            err.weight = weight_1 if "symbol" in request.query else weight_n
            raise
        if syms is not None and "symbol" in request.query:
            syms = self._status_filter(request, syms, single=True)
            return weight_1, one(syms[0])
        all_syms = syms if syms is not None else list(self.market.specs)
        return weight_n, [one(s) for s in self._status_filter(request, all_syms, single=False)]

    def _ping(self, request: web.Request) -> tuple[int, Any]:
        return 1, {}

    def _time(self, request: web.Request) -> tuple[int, Any]:
        return 1, {"serverTime": time.time_ns() // 1_000_000 + self.faults.clock_skew_ms}

    def _exchange_info(self, request: web.Request) -> tuple[int, Any]:
        try:
            syms = self._symbol_params(request)
        except _RestError as err:
            err.weight = 20
            raise
        if syms is not None and "symbolStatus" in request.query:
            raise _RestError(400, -1128, "Combination of optional parameters invalid.", 20)
        if syms is None:
            if self._exchange_symbols is None:
                self._exchange_symbols = [self.market.exchange_symbol(s) for s in self.market.specs]
            entries = self._exchange_symbols
            if "symbolStatus" in request.query:
                status = request.query["symbolStatus"]
                if status not in _STATUSES:
                    raise _RestError(400, -1122, "Invalid symbolStatus.", 20)
                entries = [e for e in entries if e["status"] == status]
        else:
            entries = [self.market.exchange_symbol(s) for s in syms]
        return 20, {
            "timezone": "UTC",
            "serverTime": time.time_ns() // 1_000_000,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.config.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 300000,
                },
            ],
            "exchangeFilters": [],
            "symbols": entries,
        }

    def _ticker_price(self, request: web.Request) -> tuple[int, Any]:
        return self._ticker_common(request, self.market.rest_price, 2, 4)

    def _ticker_book(self, request: web.Request) -> tuple[int, Any]:
        return self._ticker_common(request, self.market.rest_book, 2, 4)

    def _ticker_24hr(self, request: web.Request) -> tuple[int, Any]:
        kind = request.query.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise _RestError(
                400,
                -1100,
                "Illegal characters found in parameter 'type'; legal range is 'FULL|MINI'.",
                2,
            )
        now_ms = time.time_ns() // 1_000_000
        weight_n = 80
        text = request.query.get("symbols")
        if text is not None and _SYMBOLS_RE.match(text):
            n = len(json.loads(text))
            weight_n = 2 if n <= 20 else 40 if n <= 100 else 80
        mini = kind == "MINI"
        return self._ticker_common(
            request, lambda s: self.market.rest_24hr(s, now_ms, mini=mini), 2, weight_n
        )

    def _avg_price(self, request: web.Request) -> tuple[int, Any]:
        sym = request.query.get("symbol")
        if sym is None:
            raise _RestError(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                2,
            )
        if sym not in self.market:
            raise _RestError(400, -1121, "Invalid symbol.", 2)
        return 2, self.market.rest_avg_price(sym, time.time_ns() // 1_000_000)


class _RestError(Exception):
    """A Binance REST error body ``{"code":..,"msg":..}`` with its HTTP status."""

    def __init__(self, status: int, code: int, msg: str, weight: int = 1) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.weight = weight


def _json(body: Any, status: int, used: int) -> web.Response:
    resp = web.Response(
        text=json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json",
        charset="UTF-8",
    )
    resp.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
    resp.headers["X-MBX-USED-WEIGHT"] = str(used)
    return resp

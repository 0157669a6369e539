"""The Binance REST client against the real simulator: prices, exchangeInfo, weights, 429/418."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from pricectl.config import Settings
from pricectl.errors import FeedError, RateLimitedError, UnknownPairError
from pricectl.exchange.binance_rest import BinanceRest
from pricectl.simulator import Simulator
from tests.waiting import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

StartSim = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators on free ports (config overrides as keywords); stopped after the test."""
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        simulator = Simulator(**overrides)
        await simulator.start("127.0.0.1", 0)
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        await simulator.stop()


def settings_for(
    sim: Simulator,
    stream: str = "ticker",
    pairs: tuple[str, ...] = ("BTC/USD", "ETH/USD"),
    **ex: Any,
) -> Settings:
    base = Settings()
    exchange = replace(
        base.exchange,
        ws_url=sim.ws_url,
        rest_url=sim.rest_url,
        stream=stream,  # type: ignore[arg-type]
        rest_timeout=2.0,
        **ex,
    )
    return replace(base, exchange=exchange, pairs=pairs)


def rest_for(settings: Settings) -> BinanceRest:
    """The client as the relay builds it: the exchange section and the configured pairs."""
    return BinanceRest(settings.exchange, settings.pair_map)


async def test_ticker_prices_come_from_24hr_with_compact_symbols(start_sim: StartSim):
    """ticker -> /ticker/24hr?symbols=[...] (compact), full fields as strings, source rest."""
    sim = await start_sim()
    async with rest_for(settings_for(sim)) as rest:
        updates = await rest.fetch_prices()
        status = rest.status()
    assert [u.pair for u in updates] == ["BTC/USD", "ETH/USD"]
    btc = updates[0]
    assert btc.symbol == "BTCUSDT" and btc.source == "rest" and not btc.stale
    for value in (btc.price, btc.bid, btc.ask, btc.open, btc.high, btc.low, btc.change_pct):
        assert isinstance(value, str) and value
    assert btc.event_ms > 0 and btc.ingest_ns > 0
    # The simulator rejects a symbols list with spaces (-1100), so compactness is proven.
    assert status.weight_used == 2 and status.requests == 1 and status.failures == 0


@pytest.mark.parametrize(
    ("stream", "has_bid", "has_open"),
    [
        ("miniTicker", False, True),
        ("bookTicker", True, False),
        ("aggTrade", False, False),
        ("trade", False, False),
    ],
)
async def test_each_stream_kind_uses_its_matching_endpoint(
    start_sim: StartSim, stream: str, has_bid: bool, has_open: bool
):
    """miniTicker -> 24hr MINI, bookTicker -> ticker/bookTicker, trades -> ticker/price."""
    sim = await start_sim()
    async with rest_for(settings_for(sim, stream=stream)) as rest:
        updates = await rest.fetch_prices(["ETH/USD"])
    (eth,) = updates
    assert eth.pair == "ETH/USD" and eth.source == "rest" and isinstance(eth.price, str)
    assert (eth.bid is not None) is has_bid
    assert (eth.open is not None) is has_open
    if stream == "bookTicker":
        assert eth.price == eth.bid


async def test_prices_are_the_exchanges_strings(start_sim: StartSim):
    """The REST price is byte for byte the string the exchange sent."""
    sim = await start_sim()
    settings = settings_for(sim, stream="trade", pairs=("BTC/USD",))
    async with rest_for(settings) as rest:
        body = await rest.get("/api/v3/ticker/price", {"symbol": "BTCUSDT"}, 2)
        (u,) = await rest.fetch_prices()
    assert isinstance(body["price"], str) and "." in body["price"]
    assert "." in u.price and len(u.price.split(".")[1]) == len(body["price"].split(".")[1])


async def test_validate_pairs_accepts_trading_pairs(start_sim: StartSim):
    """Configured pairs that the exchange lists as TRADING pass the start-up check."""
    sim = await start_sim()
    async with rest_for(settings_for(sim)) as rest:
        await rest.validate_pairs()
        assert rest.status().weight_used == 20


async def test_unknown_pair_stops_startup_naming_pair_and_symbol(start_sim: StartSim):
    """A pair whose symbol the exchange does not list is an error naming both."""
    sim = await start_sim()
    async with rest_for(settings_for(sim, pairs=("BTC/USD", "FOO/USD"))) as rest:
        with pytest.raises(UnknownPairError) as err:
            await rest.validate_pairs()
    assert "FOO/USD" in str(err.value) and "FOOUSDT" in str(err.value)


async def test_non_trading_symbol_stops_startup(start_sim: StartSim):
    """A symbol listed with a status other than TRADING stops start-up too."""
    sim = await start_sim()
    async with rest_for(settings_for(sim, pairs=("BCC/BTC",))) as rest:
        with pytest.raises(UnknownPairError) as err:
            await rest.validate_pairs()
    assert "BCC/BTC" in str(err.value) and "BCCBTC" in str(err.value)
    assert "not trading" in str(err.value)


async def test_429_is_honoured_through_retry_after(start_sim: StartSim):
    """A 429 raises with its Retry-After, and nothing is sent until it has passed."""
    sim = await start_sim(fault_retry_after_s=30)
    sim.set_fault(rest429=True)
    async with rest_for(settings_for(sim)) as rest:
        with pytest.raises(RateLimitedError) as first:
            await rest.fetch_prices()
        assert first.value.status == 429 and first.value.retry_after == 30
        sent = sim.stats.rest_requests
        with pytest.raises(RateLimitedError) as second:
            await rest.fetch_prices()
        assert second.value.status == 0 and 29 <= second.value.retry_after <= 30
        assert sim.stats.rest_requests == sent
        assert rest.status().paused_for > 29


async def test_418_ban_is_logged_loudly_and_respected(
    start_sim: StartSim, caplog: pytest.LogCaptureFixture
):
    """Past the exchange's weight limit: 429, then a 418 ban logged at error level."""
    sim = await start_sim(weight_limit=4, ban_after=0, ban_s=120.0)
    # Our own budget is generous so the exchange's limit is what bites.
    async with rest_for(settings_for(sim, rest_weight_budget=1000)) as rest:
        await rest.fetch_prices()
        await rest.fetch_prices()
        with (
            caplog.at_level(logging.ERROR, logger="pricectl.exchange.rest"),
            pytest.raises(RateLimitedError) as banned,
        ):
            await rest.fetch_prices()
        assert banned.value.status == 418 and banned.value.retry_after >= 119
        assert any(
            r.levelno == logging.ERROR and "BANNED" in r.getMessage() for r in caplog.records
        )
        sent = sim.stats.rest_requests
        with pytest.raises(RateLimitedError):
            await rest.validate_pairs()
        assert sim.stats.rest_requests == sent


async def test_weight_budget_stops_polling_before_it_is_exceeded(start_sim: StartSim):
    """With a budget of 5, the third weight-2 request is not sent this minute."""
    sim = await start_sim()
    async with rest_for(settings_for(sim, rest_weight_budget=5)) as rest:
        await rest.fetch_prices()
        await rest.fetch_prices()
        sent = sim.stats.rest_requests
        with pytest.raises(RateLimitedError) as err:
            await rest.fetch_prices()
        assert err.value.status == 0 and err.value.retry_after > 0
        assert sim.stats.rest_requests == sent
        assert rest.status().weight_used == 4


async def test_server_error_is_a_feed_error(start_sim: StartSim):
    """A 500 answer is a FeedError (the cascade counts it), not a crash."""
    sim = await start_sim()
    sim.set_fault(rest500=True)
    async with rest_for(settings_for(sim)) as rest:
        with pytest.raises(FeedError) as err:
            await rest.fetch_prices()
        assert not isinstance(err.value, RateLimitedError)
        assert "500" in str(err.value)
        assert rest.status().failures == 1


async def test_unreachable_exchange_is_a_feed_error(start_sim: StartSim):
    """A closed port is a FeedError naming the path."""
    sim = await start_sim()
    settings = settings_for(sim)
    await sim.stop()
    async with rest_for(settings) as rest:
        with pytest.raises(FeedError) as err:
            await rest.fetch_prices()
    assert "/api/v3/ticker/24hr" in str(err.value)

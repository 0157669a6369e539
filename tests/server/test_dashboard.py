"""The dashboard in headless Chromium (Debian's chromium driven by Python Playwright)."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from playwright.async_api import Browser, Page, async_playwright

from pricectl.core.api import STREAM_PATH
from tests.server.harness import Running, make_settings, running
from tests.waiting import UNIT, until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for the test."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_dashboard(browser: Browser, r: Running, query: str = "") -> Page:
    page = await browser.new_page()
    page.set_default_timeout(10_000 * UNIT)
    await page.goto(r.url("/" + query))
    return page


def row(page: Page, pair: str, cell: str):
    return page.locator(f'tr[data-pair="{pair}"] .{cell}')


async def test_prices_appear_and_change(browser):
    """Published prices show up with bid/ask, change colour and a Live badge, and update."""
    async with running(make_settings(update_debounce_ms=50)) as r:
        up = r.ticker("BTC/USD", "43250.12")
        await r.publish(up)
        page = await open_dashboard(browser, r)
        await row(page, "BTC/USD", "price").filter(has_text="43250.12").wait_for()
        assert await row(page, "BTC/USD", "badge").text_content() == "Live"
        assert await row(page, "BTC/USD", "bid").text_content() == "43250.12"
        assert "up" in (await row(page, "BTC/USD", "change").get_attribute("class") or "")
        assert await page.locator("#conn").get_attribute("data-state") == "live"
        await r.publish_pairs("BTC/USD", price="43300.50")
        await row(page, "BTC/USD", "price").filter(has_text="43300.50").wait_for()
        assert await page.evaluate("window.pricectl.mode") == "shared"


async def test_stale_marker_appears_and_clears(browser):
    """When updates stop for stale_after the Stale marker shows; a new update clears it."""
    async with running(make_settings(stale_after=1.0, update_debounce_ms=50)) as r:
        await r.publish_pairs("ETH/USD", price="2000.00")
        page = await open_dashboard(browser, r)
        await row(page, "ETH/USD", "price").filter(has_text="2000.00").wait_for()
        stale = row(page, "ETH/USD", "stale")
        await stale.wait_for(state="visible")  # no update for 1 s
        await r.publish_pairs("ETH/USD", price="2001.00")
        await row(page, "ETH/USD", "price").filter(has_text="2001.00").wait_for()
        await stale.wait_for(state="hidden")
        # ingest's own stale flag is honoured too
        await r.publish_pairs("ETH/USD", price="2001.00", source="cache", stale=True)
        await stale.wait_for(state="visible")
        assert await row(page, "ETH/USD", "badge").text_content() == "Cached"


async def _page_stats(page: Page) -> dict:
    await page.evaluate("window.pricectl.refreshStats()")
    await page.wait_for_function("window.pricectl.stats !== null")
    stats = await page.evaluate("window.pricectl.stats")
    await page.evaluate("window.pricectl.stats = null")
    return stats


async def test_one_stream_across_30_forced_reconnects(browser):
    """Across 30 server-side disconnects the page never has two streams open and keeps
    one EventSource (the browser reconnects it; nothing creates another)."""
    settings = make_settings(retry=0.05, retry_jitter=0.05, update_debounce_ms=50)
    async with running(settings) as r:
        await r.publish_pairs("BTC/USD", "ETH/USD")
        page = await open_dashboard(browser, r)
        await until(lambda: r.fanout.clients == 1, 10, "the page's stream")
        for i in range(30):
            before = r.fanout.connections_total
            assert r.fanout.disconnect_all() == 1
            await until(
                lambda b=before: r.fanout.connections_total == b + 1 and r.fanout.clients == 1,
                10,
                f"reconnect {i + 1}",
            )
            assert r.fanout.clients <= 1
        assert r.fanout.peak_clients == 1
        assert r.fanout.connections_total == 31
        stats = await _page_stats(page)
        assert stats["created"] == 1 and stats["open"] == 1, stats
        # the page still shows live data afterwards
        await r.publish_pairs("BTC/USD", price="777.00")
        await row(page, "BTC/USD", "price").filter(has_text="777.00").wait_for()


async def test_two_tabs_share_one_stream(browser):
    """Two tabs of the dashboard use one stream through the SharedWorker."""
    async with running(make_settings(update_debounce_ms=50)) as r:
        await r.publish_pairs("BTC/USD", price="1.00")
        ctx = await browser.new_context()
        a = await ctx.new_page()
        b = await ctx.new_page()
        await a.goto(r.url("/"))
        await b.goto(r.url("/"))
        await row(b, "BTC/USD", "price").filter(has_text="1.00").wait_for()
        await until(lambda: r.fanout.clients == 1, 10, "one shared stream")
        await r.publish_pairs("BTC/USD", price="2.00")
        await row(a, "BTC/USD", "price").filter(has_text="2.00").wait_for()
        await row(b, "BTC/USD", "price").filter(has_text="2.00").wait_for()
        assert r.fanout.peak_clients == 1
        assert (await _page_stats(a))["tabs"] == 2
        await ctx.close()
        await until(lambda: r.fanout.clients == 0, 10, "stream closed when every tab is gone")


async def test_direct_mode_without_shared_worker(browser):
    """With SharedWorker unavailable the page holds its own single EventSource."""
    async with running(make_settings(update_debounce_ms=50)) as r:
        await r.publish_pairs("SOL/USD", price="150.00")
        page = await open_dashboard(browser, r, "?shared=0&pairs=SOL/USD")
        await row(page, "SOL/USD", "price").filter(has_text="150.00").wait_for()
        assert await page.evaluate("window.pricectl.mode") == "direct"
        assert await page.locator("tr[data-pair]").count() == 1
        stats = await _page_stats(page)
        assert stats["created"] == 1 and stats["open"] == 1
        await page.close()
        await until(lambda: r.fanout.clients == 0, 10, "stream closed on pagehide")


class StreamOutage:
    """A switch for the test: while ``on``, the stream endpoint answers 503 as a failing
    server's would (``middleware`` goes on the app the test builds)."""

    def __init__(self) -> None:
        self.on = False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """503 JSON for the stream while ``on``; every other request as usual."""
        if self.on and request.path == STREAM_PATH:
            return web.json_response(
                {"error": "unavailable", "detail": "stream disabled (test fault)"}, status=503
            )
        return await handler(request)


async def test_stream_failure_falls_back_to_rest_then_live(browser):
    """With the stream endpoint failing the page polls REST and marks values Cached;
    when the stream works again it returns to Live."""
    outage = StreamOutage()
    async with running(make_settings(update_debounce_ms=50), middlewares=[outage.middleware]) as r:
        await r.publish_pairs("BTC/USD", price="100.00")
        page = await open_dashboard(browser, r)
        badge = row(page, "BTC/USD", "badge")
        await badge.filter(has_text="Live").wait_for()
        outage.on = True
        r.fanout.disconnect_all()
        await r.publish_pairs("BTC/USD", price="101.00")  # only REST can deliver this now
        await (
            row(page, "BTC/USD", "price").filter(has_text="101.00").wait_for(timeout=20_000 * UNIT)
        )
        assert await badge.text_content() == "Cached"
        assert await page.locator("#conn").get_attribute("data-state") == "offline"
        outage.on = False
        await page.locator('#conn[data-state="live"]').wait_for(timeout=30_000 * UNIT)
        await r.publish_pairs("BTC/USD", price="102.00")
        await row(page, "BTC/USD", "price").filter(has_text="102.00").wait_for()
        await badge.filter(has_text="Live").wait_for()
        assert r.fanout.peak_clients == 1


#: Runs before any page script: the page's clock reads 60 s behind the real one.
CLOCK_60S_BEHIND = """
(() => {
  const skew = 60000;
  const RealDate = Date;
  class SkewedDate extends RealDate {
    constructor(...args) {
      if (args.length) { super(...args); } else { super(RealDate.now() - skew); }
    }
    static now() { return RealDate.now() - skew; }
  }
  window.Date = SkewedDate;
})();
"""


async def test_age_and_stale_on_the_servers_clock_when_the_page_clock_is_behind(browser):
    """With the page's clock 60 s behind, the age shown is the real one (from the stream's
    clock events) and Stale appears when the real age passes stale_after, long before the
    server's own quiet marker would."""
    async with running(make_settings(stale_after=8.0, update_debounce_ms=50)) as r:
        page = await browser.new_page()
        page.set_default_timeout(10_000 * UNIT)
        await page.add_init_script(CLOCK_60S_BEHIND)
        await page.goto(r.url("/?shared=0"))
        await until(lambda: r.fanout.clients == 1, 10, "the page's stream")
        await page.wait_for_function("Math.abs(window.pricectl.clockOffset - 60000) < 1000")
        # An update that is already 5 s old on the server's clock.
        old = replace(r.ticker("BTC/USD", "123.45"), ingest_ns=time.time_ns() - 5_000_000_000)
        sent = time.monotonic()
        await r.publish(old)
        await row(page, "BTC/USD", "price").filter(has_text="123.45").wait_for()
        age = float((await row(page, "BTC/USD", "age").text_content() or "").rstrip("s"))
        assert 4.5 <= age <= 7.0, f"age shown {age}s, real age about 5 s"
        await row(page, "BTC/USD", "stale").wait_for(state="visible", timeout=6_000 * UNIT)
        took = time.monotonic() - sent
        # Real age reaches 8 s about 3 s after the publish; serve's marker would need 8 s.
        assert took < 3.0 + 1.5 * UNIT, f"Stale after {took:.1f}s"
        assert r.hub.stale_marked == 0, "the page relied on serve's quiet marker"


async def test_serve_marks_a_pair_stale_when_updates_stop(browser):
    """The stream's own stale marker (event: stale) turns a pair Stale in the page when
    nothing arrives for stale_after, even when the page's own age check cannot tell (the
    update's stamp is ahead of every clock) and the stream stays open."""
    async with running(make_settings(stale_after=2.0, update_debounce_ms=50)) as r:
        page = await open_dashboard(browser, r, "?shared=0")
        await until(lambda: r.fanout.clients == 1, 10, "the page's stream")
        ahead = replace(r.ticker("ETH/USD", "2000.00"), ingest_ns=time.time_ns() + 60_000_000_000)
        await r.publish(ahead)
        sent = time.monotonic()
        await row(page, "ETH/USD", "price").filter(has_text="2000.00").wait_for()
        await row(page, "ETH/USD", "stale").wait_for(state="visible")
        assert time.monotonic() - sent < 2.0 + 1.0 * UNIT
        assert r.hub.stale_marked == 1
        await r.publish_pairs("ETH/USD", price="2001.00")
        await row(page, "ETH/USD", "stale").wait_for(state="hidden")


async def test_pair_picker_adds_and_removes_with_one_event_source(browser):
    """Pick a pair no config names from the suggestions: it shows live, to its tick size;
    remove it: the row goes, the URL and localStorage follow, and the page still holds
    exactly one EventSource (re-created only when the set changed)."""
    from pricectl.core.pairs import bundled_symbols
    from pricectl.core.universe import Universe

    universe = Universe.from_symbols(bundled_symbols(), {"USD": "USDT"})
    async with running(make_settings(update_debounce_ms=50)) as r:
        r.hub.universe = lambda: universe
        await r.publish_pairs("BTC/USD", price="1.00")
        page = await open_dashboard(browser, r, "?shared=0&pairs=BTC/USD")
        await row(page, "BTC/USD", "price").filter(has_text="1.00").wait_for()
        await page.fill("#pair-search", "ethb")
        await page.wait_for_function("(window.pricectl.suggestions || []).indexOf('ETH/BTC') >= 0")
        await page.fill("#pair-search", "eth-btc")
        await page.click("#picker button[type=submit]")
        await row(page, "ETH/BTC", "price").wait_for()
        await until(lambda: "ETH/BTC" in r.hub.pairs, 10, "serve hears ETH/BTC")
        await until(lambda: r.fanout.clients == 1, 10, "one stream for the new set")
        await r.publish_pairs("ETH/BTC", price="0.05343100")
        # ETH/BTC's tick size is 0.000001: six decimals
        await row(page, "ETH/BTC", "price").filter(has_text="0.053431").wait_for()
        assert await row(page, "ETH/BTC", "price").text_content() == "0.053431"
        assert await row(page, "ETH/BTC", "badge").text_content() == "Live"
        assert "pairs=BTC/USD,ETH/BTC" in page.url
        assert await page.evaluate("localStorage.getItem('pricectl.pairs')") == "BTC/USD,ETH/BTC"
        await page.click('tr[data-pair="ETH/BTC"] .remove')
        await page.locator('tr[data-pair="ETH/BTC"]').wait_for(state="detached")
        assert "ETH/BTC" not in page.url
        await until(
            lambda: r.fanout.clients == 1 and r.fanout.connections_total == 3,
            10,
            "the stream re-created once more for the smaller set",
        )
        stats = await _page_stats(page)
        assert stats["open"] == 1 and stats["created"] == 3, stats
        await r.publish_pairs("BTC/USD", price="2.00")
        await row(page, "BTC/USD", "price").filter(has_text="2.00").wait_for()
        # an unknown pair is refused in the page, with suggestions
        await page.fill("#pair-search", "BTC/USX")
        await page.click("#picker button[type=submit]")
        await page.locator("#picker-error").filter(has_text="Unknown pair BTC/USX").wait_for()
        assert await page.locator("tr[data-pair]").count() == 1
        # a pair serve refuses to turn on (here: this address's rate of new pairs) is
        # said in the page, and the stream of the others is left alone
        r.hub.activations.policy = replace(r.hub.activations.policy, per_ip=1)
        from pricectl.core.demand import Activations

        r.hub.activations = Activations(r.hub.activations.policy)
        r.hub.activations.allow("127.0.0.1", 1, r.hub._clock())
        before = r.fanout.connections_total
        await page.fill("#pair-search", "LTC/BTC")
        await page.click("#picker button[type=submit]")
        await page.locator("#picker-error").filter(has_text="Cannot add LTC/BTC").wait_for()
        assert await page.locator("tr[data-pair]").count() == 1
        assert r.fanout.connections_total == before and r.fanout.clients == 1

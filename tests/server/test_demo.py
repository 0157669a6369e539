"""A first run that works offline: `make demo` shows live simulated prices in the dashboard
(headless Chromium) within 5 s and says they are simulated; `serve` without it says once,
in plain words, that the exchange does not resolve and how to get going anyway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
from playwright.async_api import Browser

from tests.server.serve_process import serve_process
from tests.server.test_dashboard import browser  # noqa: F401 - the fixture
from tests.waiting import UNIT, until

REPO = Path(__file__).resolve().parents[2]


async def test_make_demo_shows_simulated_prices_within_5s(browser: Browser) -> None:  # noqa: F811
    """`make demo`: prices are live in the page within 5 s of the command, with a banner
    saying they are simulated; health says so too."""
    started = time.monotonic()
    # -o: the virtual environment is there already; do not let make reinstall it.
    proc = await asyncio.create_subprocess_exec(
        "make", "-s", "-o", ".venv/.installed", "demo", "ARGS=--port 0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10 * UNIT)
        assert line.startswith(b"serving on port "), line
        base = f"http://127.0.0.1:{int(line.split()[-1])}"
        page = await browser.new_page()
        await page.goto(base + "/")
        banner = page.locator("#simulated")
        await banner.wait_for(state="visible", timeout=5000 * UNIT)
        assert "Simulated prices" in (await banner.text_content() or "")
        live = page.locator('tr[data-pair="BTC/USD"] .badge').filter(has_text="Live")
        await live.wait_for(timeout=max(100, (5 * UNIT - (time.monotonic() - started)) * 1000))
        elapsed = time.monotonic() - started
        price = await page.locator('tr[data-pair="BTC/USD"] .price').text_content()
        assert price and price.strip() not in ("", "-", "—")
        async with (
            aiohttp.ClientSession() as session,
            session.get(base + "/api/market-data/health") as resp,
        ):
            health = json.loads(await resp.text())
        assert health["simulated"] is True and health["status"] == "ok"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()
    assert elapsed < 5 * UNIT


async def test_an_unresolvable_exchange_is_said_once_with_the_way_out(tmp_path: Path) -> None:
    """serve against an exchange host that does not resolve writes one plain line saying
    so and naming `pricectl serve --simulate`, and keeps serving (health answers)."""
    async with serve_process(
        tmp_path / "serve.log",
        env={
            "BINANCE_WS_URL": "wss://stream.binance.invalid:9443",
            "BINANCE_REST_URL": "https://api.binance.invalid",
            "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
        },
    ) as serve:
        hint = (
            "cannot resolve stream.binance.invalid: no network? "
            "`pricectl serve --simulate` runs a local exchange"
        )
        await until(lambda: hint in serve.log, 10, "the offline hint")
        async with (
            aiohttp.ClientSession() as session,
            session.get(serve.url("/api/market-data/health")) as resp,
        ):
            assert resp.status in (200, 503)
        await until(lambda: "ws: connect to" in serve.log, 10, "the relay retrying")
        assert serve.log.count("no network?") == 1

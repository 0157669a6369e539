"""`pricectl tail` as a real process against a real serve (memory bus fed by the test),
a real Redis and the real simulator: output modes, reconnects, --once, errors, the TTY view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pricectl.bus.base import Fence
from pricectl.core.ticks import decode_update
from pricectl.loadtest.spawn import free_port
from pricectl.server.app import create_app, start_server
from pricectl.server.keys import HUB
from tests.redis_server import RedisServer
from tests.server.harness import Running, make_settings, running
from tests.waiting import UNIT, until

#: The update object's keys (docs/protocol.md, "The update object").
UPDATE_KEYS = [
    "pair", "symbol", "price", "bid", "ask", "open", "high", "low", "change_pct", "volume",
    "event_ms", "ingest_ns", "epoch", "seq", "gseq", "source", "stale",
]  # fmt: skip


def write_config(tmp_path: Path, **extra: str) -> Path:
    """A config with the harness's pairs and a fast reconnect schedule."""
    path = tmp_path / "pricectl.yaml"
    lines = [
        "pairs: [BTC/USD, ETH/USD, SOL/USD]",
        "resilience:",
        "  backoff: {initial: 50ms, max: 300ms}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> Any:
    """Run `pricectl ARGS` to completion without blocking the loop the server runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pricectl.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout * UNIT)
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def publishing(
    r: Running, pairs: tuple[str, ...], every: float = 0.01
) -> AsyncIterator[None]:
    """Publish a new price for each pair at a steady rate while the block runs."""

    async def loop() -> None:
        n = 0
        while True:
            n += 1
            await r.publish_pairs(*pairs, price=f"{100 + n % 50}.{n % 100:02d}")
            await asyncio.sleep(every)  # pacing of the feed, not synchronisation

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_json_count_yields_valid_updates(tmp_path: Path) -> None:
    """`tail --json --count 20` prints exactly 20 valid update objects and exits 0."""
    cfg = write_config(tmp_path)
    async with running() as r, publishing(r, ("BTC/USD", "ETH/USD")):
        code, out, err = await run_cli(
            "--config", str(cfg), "tail", "BTC/USD", "ETH/USD",
            "--json", "--count", "20", "--url", r.url(""),
        )  # fmt: skip
    assert code == 0, err
    objs = parse_json_lines(out)
    assert len(objs) == 20
    for obj in objs:
        assert list(obj) == UPDATE_KEYS
        update = decode_update(obj)
        assert update.pair in ("BTC/USD", "ETH/USD") and update.source == "ws"
    keys = [(o["pair"], o["epoch"], o["seq"]) for o in objs]
    assert len(set(keys)) == 20
    assert "tail: 20 updates" in err


async def test_plain_lines_when_piped(tmp_path: Path) -> None:
    """Piped without flags, tail prints one human line per update (snapshot marked)."""
    cfg = write_config(tmp_path)
    async with running() as r:
        await r.publish_pairs("BTC/USD", price="43250.12")
        await until(lambda: "BTC/USD" in r.hub.latest, 5, "hub has BTC/USD")
        async with publishing(r, ("BTC/USD",)):
            code, out, err = await run_cli(
                "--config", str(cfg), "tail", "btc/usd", "--count", "3", "--url", r.url("")
            )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(" BTC/USD " in line and " ws " in line for line in lines)
    assert lines[0].endswith("[snapshot]")
    shape = r"^\d{4}-\d\d-\d\dT[\d:.]+Z BTC/USD ([\d.]+) \+1\.00% bid \1 ask \1 ws \d+-\d+"
    assert all(re.match(shape, line) for line in lines), lines


async def test_once_prints_the_snapshot_and_exits_zero(tmp_path: Path) -> None:
    """`tail --once` prints each pair's latest price (and nothing live) and exits 0."""
    cfg = write_config(tmp_path)
    async with running() as r:
        ups = await r.publish_pairs("BTC/USD", "ETH/USD", price="7.5")
        await until(lambda: len(r.hub.latest) == 2, 5, "hub has two pairs")
        code, out, err = await run_cli(
            "--config", str(cfg), "tail", "BTC/USD", "ETH/USD", "--once", "--json",
            "--url", r.url(""),
        )  # fmt: skip
        assert code == 0, err
        objs = parse_json_lines(out)
        assert [(o["pair"], o["seq"], o["price"]) for o in objs] == [
            (u.pair, u.seq, "7.5") for u in ups
        ]
        code, out, err = await run_cli(
            "--config", str(cfg), "tail", "SOL/USD", "--once", "--url", r.url("")
        )
    assert code == 1 and "no price yet for SOL/USD" in err


async def test_reconnects_after_server_restart_with_no_duplicate(tmp_path: Path) -> None:
    """After serve restarts on the same port, tail reconnects, says so, and continues with no
    update printed twice (the snapshot repeat is dropped, a jump is marked as a resync)."""
    cfg = write_config(tmp_path)
    settings = make_settings(retry=0.1, retry_jitter=0.05)
    async with running(settings) as r:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pricectl.cli", "--config", str(cfg),
            "tail", "BTC/USD", "ETH/USD", "--json", "--url", r.url(""),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[dict[str, Any]] = []
        errs: list[str] = []

        async def read_out() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                lines.append(json.loads(raw))

        async def read_err() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                errs.append(raw.decode())

        readers = [asyncio.create_task(read_out()), asyncio.create_task(read_err())]
        try:
            await r.publish_pairs("BTC/USD", "ETH/USD")
            await until(lambda: len(lines) >= 2, 10, "the first two updates")
            async with publishing(r, ("BTC/USD",), every=0.02):
                await until(lambda: len(lines) >= 10, 10, "ten updates before the restart")
            before = len(lines)
            # Restart serve on the same port with the same bus: the client resumes and the
            # new hub answers with the snapshot of prices the client has already shown.
            await r.runner.cleanup()
            await until(lambda: any("disconnected" in e for e in errs), 10, "the drop reported")
            app = create_app(settings, r.bus)
            r.runner, _ = await start_server(app, "127.0.0.1", r.port)
            r.hub = app[HUB]
            await until(lambda: r.hub.ready, 5, "new hub ready")
            await until(lambda: any("reconnected" in e for e in errs), 10, "the reconnect")
            await r.publish_pairs("ETH/USD", price="999.99")
            await until(
                lambda: any(o["price"] == "999.99" for o in lines), 10, "an update after restart"
            )
        finally:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 10 * UNIT)
            await asyncio.gather(*readers)
    assert code == 130
    keys = [(o["pair"], o["epoch"], o["seq"]) for o in lines]
    assert len(keys) == len(set(keys)), "an update was printed twice"
    assert len(lines) == before + 1
    err_text = "".join(errs)
    assert "reconnect #1" in err_text and "resuming after" in err_text
    assert "1 reconnect," in err_text and "0 duplicates dropped" in err_text


async def test_unknown_pair_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A pair serve cannot serve: one error line naming it and what can be, exit 2."""
    cfg = write_config(tmp_path)
    async with running() as r:
        code, out, err = await run_cli("--config", str(cfg), "tail", "FOO/BAR", "--url", r.url(""))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "unknown pair 'FOO/BAR'" in err and "BTC/USD, ETH/USD, SOL/USD" in err


async def test_malformed_pair_is_a_usage_error(tmp_path: Path) -> None:
    """A malformed pair never reaches the network: one line, exit 2."""
    code, out, err = await run_cli("--config", str(write_config(tmp_path)), "tail", "BTCUSD")
    assert out == ""
    assert code == 2 and err.count("\n") == 1 and "expected BASE/QUOTE" in err


async def test_unreachable_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Nothing listening: one line with the hint that fixes it, exit 1."""
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(
        "--config", str(write_config(tmp_path)), "tail", "BTC/USD", "--url", url
    )
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "connection refused" in err
    assert "is `pricectl serve` running" in err and "--from binance" in err


async def test_wrong_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A URL that is not the stream (404, or a JSON page): one line saying so, exit 2."""
    cfg = str(write_config(tmp_path))
    async with running() as r:
        code, _, err = await run_cli("--config", cfg, "tail", "BTC/USD", "--url", r.url("/nope"))
        assert code == 2 and err.count("\n") == 1 and "HTTP 404" in err and "--url" in err
        code, _, err = await run_cli(
            "--config", cfg, "tail", "BTC/USD", "--url", r.url("/api/market-data/config")
        )
        assert code == 2 and err.count("\n") == 1 and "not an SSE stream" in err


async def test_from_redis_reads_snapshot_then_live(tmp_path: Path, redis_server: RedisServer):
    """`tail --from redis` prints the bus snapshot first, then live updates in order."""
    import redis.asyncio as aioredis

    from pricectl.bus import keys
    from pricectl.bus.redis import RedisBus
    from tests.server.harness import tick

    raw = aioredis.from_url(redis_server.url)
    await raw.set(keys.leader(""), "test-token")
    await raw.set(keys.epoch(""), "5")
    await raw.aclose()
    bus = RedisBus(redis_server.url)
    await bus.start()
    fence, ticker = Fence("test-token", 5), tick(5)
    try:
        await bus.publish([ticker("BTC/USD", "1.00")], fence)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pricectl.cli", "--config", str(write_config(tmp_path)),
            "tail", "BTC/USD", "--from", "redis", "--redis", redis_server.url,
            "--json", "--count", "4",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 15 * UNIT)
        assert json.loads(first)["seq"] == 1
        for price in ("2.00", "3.00", "4.00"):
            await bus.publish([ticker("BTC/USD", price)], fence)
        out, err = await asyncio.wait_for(proc.communicate(), 15 * UNIT)
    finally:
        await bus.close()
    assert proc.returncode == 0, err
    objs = parse_json_lines(out.decode())
    assert [o["seq"] for o in objs] == [2, 3, 4]
    assert [o["price"] for o in objs] == ["2.00", "3.00", "4.00"]


async def test_from_redis_unreachable_is_exit_1(tmp_path: Path) -> None:
    """Redis not running: one line with the hint, exit 1."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = await run_cli(
        "--config", str(write_config(tmp_path)), "tail", "BTC/USD", "--from", "redis",
        "--redis", url,
    )  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "is redis-server running" in err


async def test_from_binance_reads_the_simulator(tmp_path: Path) -> None:
    """`tail --from binance` reads the exchange (the real simulator) with no server between."""
    from pricectl.simulator import Simulator

    sim = Simulator(ticker_interval=0.1)
    await sim.start("127.0.0.1", 0)
    try:
        code, out, err = await run_cli(
            "--config", str(write_config(tmp_path)), "tail", "BTC/USD", "ETH/USD",
            "--from", "binance", "--json", "--count", "6",
            env={"BINANCE_WS_URL": sim.ws_url, "BINANCE_REST_URL": sim.rest_url},
        )  # fmt: skip
    finally:
        await sim.stop()
    assert code == 0, err
    objs = parse_json_lines(out)
    assert len(objs) == 6 and {o["pair"] for o in objs} <= {"BTC/USD", "ETH/USD"}
    assert all(o["symbol"] in ("BTCUSDT", "ETHUSDT") and o["source"] == "ws" for o in objs)


async def test_live_table_in_a_real_terminal(tmp_path: Path) -> None:
    """In tmux (a real terminal) tail draws the table, updates it, and Ctrl-C exits 130."""
    tmux = shutil.which("tmux")
    assert tmux is not None, "tmux is required (make system-packages installs it)"
    cfg = write_config(tmp_path)
    sock = str(tmp_path / "tmux.sock")
    done = tmp_path / "exit-code"
    async with running() as r:
        await r.publish_pairs("BTC/USD", "ETH/USD", price="100.00")
        await until(lambda: len(r.hub.latest) == 2, 5, "hub has two pairs")
        # bash waits for a child that handles SIGINT itself and then runs the echo. Under
        # pytest the pane inherits COLUMNS=80/LINES=24, which rich would obey over the pty.
        cmd = (
            f"env -u COLUMNS -u LINES bash -c '{sys.executable} -m pricectl.cli --config {cfg} "
            f"tail BTC/USD ETH/USD --url {r.url('')}; echo $? > {done}'"
        )

        async def tm(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                tmux, "-S", sock, *args, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            return out.decode()

        name = f"tail-{uuid.uuid4().hex[:8]}"
        await tm("new-session", "-d", "-s", name, "-x", "120", "-y", "20", cmd)
        await tm("set-option", "-w", "-t", name, "remain-on-exit", "on")
        try:

            async def screen() -> str:
                return await tm("capture-pane", "-p", "-t", name)

            async def shows(text: str) -> bool:
                return text in await screen()

            await until(lambda: shows("100.00"), 20, "the table with the snapshot")
            text = await screen()
            assert "pair" in text and "BTC/USD" in text and "ETH/USD" in text
            assert "WS" in text and "live" in text and "reconnects: 0" in text
            await r.publish_pairs("BTC/USD", price="123.45")
            await until(lambda: shows("123.45 ▲"), 10, "the table updated with a rise")
            await tm("send-keys", "-t", name, "C-c")
            await until(done.exists, 10, "tail to exit after Ctrl-C")
            await until(lambda: done.read_text().strip() != "", 5, "the exit code written")
            assert done.read_text().strip() == "130"
            assert "Traceback" not in await screen()
        finally:
            await tm("kill-server")


async def test_real_serve_and_simulator_end_to_end(tmp_path: Path) -> None:
    """Against a real `pricectl serve` process fed by the simulator: health turns ok (exit 0)
    and `tail --json --count 20` prints 20 valid live updates in order per pair."""
    import aiohttp

    from pricectl.simulator import Simulator
    from tests.server.test_process import serve_process

    sim = Simulator(ticker_interval=0.1)
    await sim.start()
    cfg = str(write_config(tmp_path))
    env = {"PRICECTL_PAIRS": "[BTC/USD, ETH/USD]"}
    try:
        async with serve_process(sim) as (_proc, port), aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}"

            async def live() -> bool:
                async with http.get(url + "/api/market-data/health") as resp:
                    return (await resp.json())["status"] == "ok"

            await until(live, 30, "serve to report every pair live")
            code, out, err = await run_cli("--config", cfg, "health", "--url", url, env=env)
            assert code == 0, out + err
            code, out, err = await run_cli(
                "--config", cfg, "tail", "BTC/USD", "ETH/USD", "--json", "--count", "20",
                "--url", url, env=env,
            )  # fmt: skip
    finally:
        await sim.stop()
    assert code == 0, err
    objs = parse_json_lines(out)
    assert len(objs) == 20
    for pair in ("BTC/USD", "ETH/USD"):
        seqs = [o["seq"] for o in objs if o["pair"] == pair]
        assert seqs == sorted(set(seqs)), f"{pair}: out of order or repeated {seqs}"
    assert all(decode_update(o).symbol in ("BTCUSDT", "ETHUSDT") for o in objs)


async def test_tail_says_when_serve_marks_a_pair_stale(tmp_path: Path) -> None:
    """Updates stop: serve's event: stale reaches `tail` as one status line naming the pair
    (and the clock events it gets with every ping print nothing)."""
    cfg = write_config(tmp_path)
    async with running(make_settings(stale_after=1.0, ping_interval=0.2)) as r:
        await r.publish_pairs("BTC/USD", price="100.00")
        code, _out, err = await run_cli(
            "--config", str(cfg), "tail", "BTC/USD", "--duration", "2.5", "--url", r.url(""),
        )  # fmt: skip
    assert code == 0, err
    assert "BTC/USD: stale (no update for 1s; the last price is not live)" in err
    assert "server clock" not in err and "clock:" not in err


def test_board_ages_on_the_servers_clock() -> None:
    """With the server's clock known (60 s ahead of ours), an update stamped 5 s ago on
    the server is 5 s old on the board, not 65 s; a stale marker for it makes it stale."""
    from pricectl.client.events import Clock, Price, Stale
    from pricectl.client.views import Board
    from pricectl.core.sequence import Check, Verdict
    from pricectl.core.ticks import PriceUpdate

    board = Board(["BTC/USD"], source="test", stale_after=30.0)
    ours_ns = 1_000_000_000_000_000_000
    server_ms = ours_ns // 1_000_000 + 60_000
    board.apply(Clock(server_ms=server_ms, received_ns=ours_ns), now=100.0)
    update = PriceUpdate(
        pair="BTC/USD", symbol="BTCUSDT", price="1", event_ms=0,
        ingest_ns=(server_ms - 5_000) * 1_000_000, epoch=7, seq=3, gseq=3,
    )  # fmt: skip
    price = Price(update, Check(Verdict.FIRST), received=100.0, received_ns=ours_ns)
    board.apply(price, now=100.0)
    row = board.rows["BTC/USD"]
    assert row.age(101.0) == 6.0
    assert not row.is_stale(101.0, 30.0)
    board.apply(Stale("BTC/USD", "no update for 30s", epoch=7, seq=3), now=101.0)
    assert row.is_stale(101.0, 30.0)

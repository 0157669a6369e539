"""The Redis password never leaves the process: every command and every endpoint, in text
and JSON logs at debug level, with the password in the URL's userinfo and in its query.

A real redis-server runs with ``--requirepass``; ``pricectl ingest`` (reading the
simulator) and ``pricectl serve`` run against it as processes; every endpoint is asked,
every other command is run (the failing ones too: a wrong password, TLS against a plain
server, a URL that does not parse); then everything they printed and answered is
searched for the password.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from pricectl.simulator import Simulator, SimulatorConfig, symbols_for_pairs
from tests.redis_server import RedisServer
from tests.server.harness import SSEConn
from tests.server.serve_process import ServeProcess, serve_process
from tests.waiting import UNIT, until

PASSWORD = "Pw-9f3b1c7e-never-print-me"
WRONG = "Wrong-1d2e3f-never-print-me-either"
PAIRS = ("BTC/USD", "ETH/USD")
ENDPOINTS = (
    "/",
    "/static/dashboard.js",
    "/api/market-data/health",
    "/api/market-data/prices",
    "/api/market-data/config",
    "/metrics",
    "/nope",
)


async def _run(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    """``pricectl ARGS`` to the end; its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pricectl.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout * UNIT)
    return out.decode(errors="replace")


async def _endpoints(serve: ServeProcess) -> list[str]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for path in ENDPOINTS:
            async with session.get(serve.url(path)) as resp:
                answers.append(f"{path} {resp.status} {dict(resp.headers)} {await resp.text()}")
    conn = await SSEConn.open(serve.port, "/api/market-data/stream?pairs=BTC/USD")
    try:
        await conn.wait_events(3, timeout=10)
        answers.append(str(conn.headers) + conn.body.decode(errors="replace"))
    finally:
        conn.close()
    return answers


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20 * UNIT)


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "form"), [("text", "userinfo"), ("json", "query")])
async def test_the_password_is_in_no_output(tmp_path: Path, fmt: str, form: str) -> None:
    """Nothing any command prints or any endpoint answers holds the Redis password (each
    log format once, each form of the password in the URL once)."""
    redis = RedisServer(tmp_path, password=PASSWORD)
    redis.start()
    sim = Simulator(SimulatorConfig(symbols=symbols_for_pairs(PAIRS)))
    await sim.start()
    base = f"127.0.0.1:{redis.port}"
    url = (
        f"redis://:{PASSWORD}@{base}/0"
        if form == "userinfo"
        else (f"redis://{base}/0?password={PASSWORD}")
    )
    wrong = (
        f"redis://:{WRONG}@{base}/0"
        if form == "userinfo"
        else (f"redis://{base}/0?password={WRONG}")
    )
    env = {
        "REDIS_URL": url,
        "BINANCE_WS_URL": sim.ws_url,
        "BINANCE_REST_URL": sim.rest_url,
        "PRICECTL_PAIRS": "[" + ", ".join(PAIRS) + "]",
        "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
    }
    logs = ("--log-level", "debug", "--log-format", fmt)
    outputs: list[str] = []
    ingest_log = tmp_path / "ingest.log"
    try:
        with open(ingest_log, "wb") as sink:
            ingest = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pricectl.cli", *logs, "ingest",
                stdout=sink, stderr=sink, env={**os.environ, **env},
            )  # fmt: skip
        try:
            async with serve_process(tmp_path / "serve.log", env=env, global_args=logs) as serve:

                async def priced() -> bool:
                    async with (
                        aiohttp.ClientSession() as s,
                        s.get(serve.url("/api/market-data/prices")) as r,
                    ):
                        return len((await r.json())["prices"]) == len(PAIRS)

                await until(priced, 30, "prices through Redis")
                outputs += await _endpoints(serve)
                commands = [
                    ("health", "--url", serve.url()),
                    ("health", "--url", serve.url(), "--json"),
                    ("health", "--redis", url),
                    ("health", "--redis", url, "--json"),
                    ("health", "--redis", wrong),
                    ("health", "--redis", url.replace("redis://", "rediss://"), "--timeout", "1s"),
                    ("health", "--redis", url.replace(f"{redis.port}", "notaport")),
                    ("tail", "BTC/USD", "--from", "redis", "--once"),
                    ("tail", "BTC/USD", "--from", "redis", "--redis", wrong, "--once"),
                    ("tail", "BTC/USD", "--from", "serve", "--url", serve.url(), "--once"),
                    ("config", "show"),
                    ("config", "check"),
                    ("loadtest", "--url", serve.url(), "--clients", "3", "--duration", "1s",
                     "--processes", "1", "--ramp", "100/s"),
                ]  # fmt: skip
                for args in commands:
                    outputs.append(await _run(*logs, *args, env=env))
                outputs.append(await _run(*logs, "config", "show", env={**env, "REDIS_URL": wrong}))
                outputs.append(
                    await _run(
                        *logs, "serve", "--port", "0",
                        env={**env, "REDIS_URL": url.replace(f"{redis.port}", "x")},
                    )
                )  # fmt: skip
                await _stop(serve.proc)
                outputs.append(serve.log)
        finally:
            await _stop(ingest)
        outputs.append(ingest_log.read_text(errors="replace"))
    finally:
        await sim.stop()
        redis.kill()
    everything = "\n".join(outputs)
    assert "serving on http://" in everything and "***" in everything
    assert "candidate for the lease" in everything  # ingest ran and said where
    for secret in (PASSWORD, WRONG):
        assert secret not in everything, [o[:300] for o in outputs if secret in o]

"""`pricectl health --through https://...` against a real TLS proxy that speaks HTTP/2.

The proxy is Hypercorn (an ASGI server with HTTP/2 over TLS, negotiated by ALPN as a
browser negotiates it) running a small reverse proxy to serve, with a self-signed
certificate made by the ``openssl`` command for 127.0.0.1. It passes the stream on
chunk by chunk, or (``flush_every``) holds it like a buffering proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from tests.client.test_tail import publishing, run_cli, write_config
from tests.server.harness import make_settings, running
from tests.waiting import until

ALL = ("BTC/USD", "ETH/USD", "SOL/USD")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, made by the openssl command."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed (Debian package openssl)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "proxy.pem", folder / "proxy.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=pricectl test proxy",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _proxy_app(upstream: str, flush_every: float | None) -> Any:
    """An ASGI reverse proxy to ``upstream`` for GET requests, streaming the answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        query = scope["query_string"].decode()
        target = upstream + scope["path"] + (f"?{query}" if query else "")

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relay = asyncio.ensure_future(_relay(target, send, flush_every))
        gone = asyncio.ensure_future(until_disconnect())
        await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (relay, gone):
            task.cancel()
        await asyncio.gather(relay, gone, return_exceptions=True)

    return app


async def _relay(target: str, send: Any, flush_every: float | None) -> None:
    """GET ``target`` and pass its body on as it comes (or held, every ``flush_every``)."""
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("GET", target, headers={"Accept": "text/event-stream"}) as up,
    ):
        await send(
            {
                "type": "http.response.start",
                "status": up.status_code,
                "headers": [(b"content-type", up.headers["content-type"].encode())],
            }
        )
        held = b""
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            async for chunk in up.aiter_raw():
                if flush_every is not None:
                    held += chunk
                    if loop.time() - last < flush_every:
                        continue
                    chunk, held, last = held, b"", loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.asynccontextmanager
async def tls_proxy(
    upstream: str, cert: Path, key: Path, flush_every: float | None = None
) -> AsyncIterator[str]:
    """Hypercorn with TLS (h2 and http/1.1 by ALPN) on a free port in front of
    ``upstream``; yields its https URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) it from here
    config.certfile, config.keyfile = str(cert), str(key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    server = asyncio.ensure_future(
        hypercorn_serve(_proxy_app(upstream, flush_every), config, shutdown_trigger=stop.wait)
    )
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_through_a_trusted_tls_proxy_over_http2(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """--cacert with the proxy's certificate: the stream is read over HTTP/2 and the
    verdict is one line, unbuffered (exit 0)."""
    cert, key = certificate
    cfg = str(write_config(tmp_path))
    async with running(make_settings()) as r:
        await r.publish_pairs(*ALL)
        await until(lambda: len(r.hub.latest) == 3, 5, "hub has every pair")
        async with publishing(r, ALL, every=0.05), tls_proxy(r.url(""), cert, key) as proxy:
            code, out, err = await run_cli(
                "--config", cfg, "health", "--url", r.url(""), "--through", proxy,
                "--cacert", str(cert), "--window", "2s",
            )  # fmt: skip
            assert code == 0, out + err
            assert "passes the stream through unbuffered (HTTP/2)" in out
            assert "COULD NOT" not in out and "BUFFERS" not in out
            code, out, _ = await run_cli(
                "--config", cfg, "health", "--url", r.url(""), "--through", proxy,
                "--cacert", str(cert), "--window", "2s", "--json",
            )  # fmt: skip
    report = json.loads(out)["through"]
    assert code == 0 and report["http_version"] == "HTTP/2" and report["buffers"] is False
    assert report["events_through"] >= 10


async def test_an_untrusted_certificate_is_one_verdict_with_the_fix(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Without --cacert a self-signed proxy is 'could not check', naming --cacert and
    --insecure, never 'passes'; --insecure looks anyway, with a warning."""
    cert, key = certificate
    cfg = str(write_config(tmp_path))
    async with running(make_settings()) as r:
        await r.publish_pairs(*ALL)
        async with publishing(r, ALL, every=0.05), tls_proxy(r.url(""), cert, key) as proxy:
            code, out, err = await run_cli(
                "--config", cfg, "health", "--url", r.url(""), "--through", proxy,
                "--window", "1s",
            )  # fmt: skip
            assert code == 1, out + err
            assert "COULD NOT CHECK the stream through the proxy" in out
            assert "passes the stream" not in out
            assert "certificate is not trusted" in out and "--cacert" in out
            assert "--insecure" in out
            code, out, err = await run_cli(
                "--config", cfg, "health", "--url", r.url(""), "--through", proxy,
                "--insecure", "--window", "2s",
            )  # fmt: skip
    assert code == 0, out + err
    assert "passes the stream through unbuffered (HTTP/2)" in out
    assert err.count("\n") == 1 and "warning: --insecure" in err


async def test_a_buffering_tls_proxy_is_found_out(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """A TLS proxy that holds the stream for 1.5 s is reported as buffering (exit 1)."""
    cert, key = certificate
    cfg = str(write_config(tmp_path))
    async with running(make_settings()) as r:
        await r.publish_pairs(*ALL)
        async with (
            publishing(r, ALL, every=0.05),
            tls_proxy(r.url(""), cert, key, flush_every=1.5) as proxy,
        ):
            code, out, err = await run_cli(
                "--config", cfg, "health", "--url", r.url(""), "--through", proxy,
                "--cacert", str(cert), "--window", "2s",
            )  # fmt: skip
    assert code == 1, out + err
    assert "BUFFERS the stream (HTTP/2)" in out


async def test_cacert_options_are_checked(tmp_path: Path) -> None:
    """--cacert with a file that holds no certificate, or without --through, is a usage
    error naming the option (exit 2)."""
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    code, _, err = await run_cli(
        "health", "--url", "http://127.0.0.1:1", "--through", "https://127.0.0.1:2",
        "--cacert", str(bad),
    )  # fmt: skip
    assert code == 2 and "--cacert" in err and "not a PEM file" in err
    code, _, err = await run_cli("health", "--insecure")
    assert code == 2 and "--through" in err

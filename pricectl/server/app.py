"""The aiohttp application: routes, security defaults, access log, and the serve process.

In-process use (tests, embedding)::

    bus = MemoryBus()
    app = create_app(settings, bus)              # optional: upstream=relay, hub=Hub(...)
    runner, port = await start_server(app, "127.0.0.1", 0)
    hub = app[HUB]                               # keys.HUB; hub.latest, hub.fanout.clients ...
    ...
    await runner.cleanup()

``serve_forever`` is the whole ``pricectl serve`` process (bus, embedded relay,
graceful SIGTERM); ``run_workers`` forks N of them on one port with SO_REUSEPORT.

Security defaults: bind 127.0.0.1; CORS only for ``server.cors_origins`` (empty:
same origin only); errors are JSON without stack traces or addresses, those of
requests aiohttp cannot parse included; request bodies are refused (no endpoint takes
one) and header sizes are aiohttp's 8 KiB; the ``Server`` header names no version.
Connections have deadlines for the request head and for idle keep-alive, and a budget
sized from the open-file limit (``connections.py``, ``descriptors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from pricectl import __version__
from pricectl.bus.base import Bus
from pricectl.config import Settings, redact_url
from pricectl.core.api import PAIRS_PATH, STREAM_PATH
from pricectl.errors import PricectlError, UsageError
from pricectl.exchange.offline import say_if_offline
from pricectl.exchange.universe import UniverseSource
from pricectl.logs import escape
from pricectl.server import descriptors, watchdog
from pricectl.server.connections import (
    SERVER_HEADER,
    ConnectionRules,
    ConnectionStats,
    ErrorResponse,
    ServeRunner,
)
from pricectl.server.errors import bad_request, error_json
from pricectl.server.health import Upstream, UpstreamStatus, health_report
from pricectl.server.hub import Hub, Refusal
from pricectl.server.keys import BUS, HUB, SETTINGS, UPSTREAM
from pricectl.server.metrics import CONTENT_TYPE, render_metrics
from pricectl.server.stream import activate, parse_pairs, stream_handler

if TYPE_CHECKING:  # loaded only when serve runs the relay itself (memory://)
    from pricectl.ingest.relay import Relay

__all__ = [
    "AccessLogger",
    "create_app",
    "run_workers",
    "serve_forever",
    "start_server",
]

log = logging.getLogger("pricectl.server")

#: True when the prices come from the in-process simulator (``serve --simulate``).
SIMULATED = web.AppKey("simulated", bool)
#: What happened to connections before a handler had them (deadlines, budget, bad HTTP).
CONNECTIONS = web.AppKey("connections", ConnectionStats)

STATIC = Path(__file__).parent / "static"


# --- middlewares and signals ---------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as JSON; an unexpected one is logged here and never shown to the client."""
    try:
        if request.method == "OPTIONS":
            return _preflight(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_json(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_json(500, "internal", "internal server error")


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin:
        return None
    allowed = request.app[SETTINGS].server.cors_origins
    if origin in allowed or "*" in allowed:
        return origin
    return None


def _preflight(request: web.Request) -> web.Response:
    if _allowed_origin(request) is None:
        return error_json(403, "forbidden", "origin not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "Last-Event-ID, Cache-Control",
            "Access-Control-Max-Age": "600",
        },
    )


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """CORS for allowed origins and a few safe headers on every response (streams included)."""
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    response.headers["Server"] = SERVER_HEADER
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


class AccessLogger(AbstractAccessLogger):
    """One structured line per request on ``pricectl.access``.

    Streams log once, when the hub takes them over after the opening (never per
    event; the hub then owns the connection, see stream.py), at debug level when
    they were accepted: at 10,000 clients a line per connection is noise. The path is
    the client's: it is escaped, so it cannot forge a line. A request aiohttp could not
    parse is not logged here (:mod:`pricectl.server.connections` logs it, rate-limited).
    """

    def log(self, request: Any, response: Any, time: float) -> None:
        if isinstance(response, ErrorResponse):
            return
        stream = request.path == STREAM_PATH and response.status == 200
        level = logging.DEBUG if stream else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        method = escape(request.method, 32)
        path = escape(request.path, 512)
        extra = {
            "method": method,
            "path": path,
            "status": response.status,
            "duration_ms": round(time * 1000, 1),
            "remote": request.remote,
            "bytes": response.body_length,
        }
        self.logger.log(
            level,
            "%s %s %s %.1fms",
            method,
            path,
            response.status,
            time * 1000,
            extra=extra,
        )


# --- handlers ------------------------------------------------------------------------------


def _no_store(resp: web.Response) -> web.Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def _index(request: web.Request) -> web.StreamResponse:
    resp = web.FileResponse(STATIC / "index.html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def _config(request: web.Request) -> web.Response:
    """What the dashboard needs to know: pairs, debounce, staleness threshold."""
    s = request.app[SETTINGS]
    return _no_store(
        web.json_response(
            {
                "pairs": list(s.pair_map.pairs),
                "update_debounce_ms": s.server.update_debounce_ms,
                "stale_after_ms": int(s.resilience.heartbeat.stale_after * 1000),
                "stream": STREAM_PATH,
                # How long the stream may be down before the page polls REST (ms).
                "failover_ms": 3000,
                "version": __version__,
                # The prices come from the local simulator: the page shows a banner.
                "simulated": request.app[SIMULATED],
            }
        )
    )


async def _prices(request: web.Request) -> web.Response:
    """REST snapshot (the browser's fallback): the latest 3.2 object per pair.

    ``stale`` is true when ingest said so or the update is older than stale_after.
    """
    hub = request.app[HUB]
    pairs = parse_pairs(hub, request)
    if isinstance(pairs, web.Response):
        return pairs
    refused = await activate(hub, request, pairs)
    if refused is not None:
        return refused
    from pricectl.server.health import pair_states

    states = pair_states(hub)
    out = []
    pending = []
    for pair in hub.pairs:
        if pair not in pairs:
            continue
        raw = hub.latest_raw.get(pair)
        if raw is None:
            pending.append(pair)
            continue
        obj = json.loads(raw)
        state = states.get(pair)
        obj["stale"] = bool(obj.get("stale") or (state is not None and state["stale"]))
        out.append(obj)
    body: dict[str, Any] = {"prices": out, "position": f"{hub.epoch}-{hub.gseq}"}
    if pending:
        # Just turned on: the leader is fetching them; ask again in a moment.
        body["pending"] = pending
    return _no_store(web.json_response(body))


async def _pairs(request: web.Request) -> web.Response:
    """``GET /api/market-data/pairs``: what can be asked for, and what is on now.

    ``?q=`` searches (the dashboard's picker): at most ``limit`` (default 20) names,
    those starting with the text first; ``?pairs=A,B`` describes exactly those (unknown
    ones left out). Without either, every servable pair is listed.
    Each entry: ``pair``, ``symbol``, ``tick_size``, ``decimals`` and whether it is
    ``pinned``, ``wanted`` (by some serve of the cluster) or ``active`` (heard here).
    """
    hub = request.app[HUB]
    universe = hub.universe()
    q = request.query.get("q")
    try:
        limit = int(request.query.get("limit", "20" if q is not None else "100000"))
    except ValueError:
        return bad_request("malformed_limit", "limit must be a whole number")
    limit = max(1, min(limit, 100_000))
    asked = request.query.get("pairs")
    if asked is not None:
        # Exactly these (the dashboard's saved set): the known ones, canonical, in order.
        names = []
        for text in asked.split(",")[: hub.settings.server.max_pairs_per_connection]:
            if not text.strip():
                continue
            try:
                names += [p for p in hub.resolve([text]) if p not in names]
            except Refusal:
                continue
    elif universe is None:
        names = list(hub.pinned)
    elif q is not None:
        names = universe.search(q, limit, prefer=hub.pinned)
    else:
        names = universe.search("", limit, prefer=hub.pinned)
    wanted = hub.demand.wanted
    heard = set(hub.pairs)
    entries = []
    for name in names:
        entry: dict[str, Any] = {"pair": name}
        if universe is not None and name in universe:
            m = universe.market(name)
            entry.update(symbol=m.symbol, tick_size=m.tick_size, decimals=m.decimals)
        else:
            entry["symbol"] = hub.settings.pair_map.symbol_for(name)
        entry["pinned"] = name in hub.pinned
        entry["wanted"] = name in wanted
        entry["active"] = name in heard
        entries.append(entry)
    return _no_store(
        web.json_response(
            {
                "pairs": entries,
                "count": len(universe) if universe is not None else len(hub.pinned),
                "pinned": list(hub.pinned),
                "active": list(hub.pairs),
                "wanted": sorted(wanted),
                "max_pairs": hub.settings.exchange.max_pairs,
                "universe_loaded": universe is not None,
            }
        )
    )


async def _health(request: web.Request) -> web.Response:
    report = health_report(request.app[HUB], request.app[UPSTREAM])  # type: ignore[arg-type]
    if request.app[SIMULATED]:
        report["simulated"] = True
    status = 503 if report["status"] == "down" else 200
    return _no_store(web.json_response(report, status=status))


async def _metrics(request: web.Request) -> web.Response:
    text = render_metrics(request.app[HUB], request.app[UPSTREAM])  # type: ignore[arg-type]
    text += request.app[CONNECTIONS].render()
    resp = web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
    return _no_store(resp)


# --- the application -----------------------------------------------------------------------


def create_app(
    settings: Settings,
    bus: Bus,
    upstream: UpstreamStatus | None = None,
    *,
    hub: Hub | None = None,
    simulated: bool = False,
) -> web.Application:
    """The serve application. The hub's bus subscription runs while the app runs
    (``bus.start()`` is the caller's job; the hub waits for the bus by itself).
    ``simulated``: the prices come from the local simulator, and the page, the config
    and the health report say so."""
    app = web.Application(middlewares=[_errors], client_max_size=1024)
    app[SIMULATED] = simulated
    app[CONNECTIONS] = ConnectionStats()
    the_hub = hub if hub is not None else Hub(settings, bus)
    app[HUB] = the_hub
    app[SETTINGS] = settings
    app[BUS] = bus
    app[UPSTREAM] = upstream
    app.router.add_get("/", _index)
    app.router.add_get(STREAM_PATH, stream_handler, allow_head=False)
    app.router.add_get("/api/market-data/prices", _prices)
    app.router.add_get("/api/market-data/health", _health)
    app.router.add_get("/api/market-data/config", _config)
    app.router.add_get(PAIRS_PATH, _pairs)
    app.router.add_get("/metrics", _metrics)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_hub_context)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _hub_context(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB]
    task = asyncio.create_task(hub.run(), name="pricectl-hub")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _on_shutdown(app: web.Application) -> None:
    app[HUB].draining = True
    app[HUB].fanout.disconnect_all("shutdown")


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    budget: int = 0,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0 picks a free port); returns the runner and the port.

    Handlers are cancelled when their client goes away, so a closed stream is
    unregistered at once rather than at the next heartbeat. Connections follow
    ``server.request_head_timeout`` and ``server.keepalive_timeout``, and ``budget``
    (when above 0) bounds the connections open at once, streams included
    (:mod:`pricectl.server.connections`).
    """
    s = app[SETTINGS].server
    hub = app[HUB]
    rules = ConnectionRules(
        head_timeout=s.request_head_timeout,
        keepalive_timeout=s.keepalive_timeout,
        budget=budget,
    )
    runner = ServeRunner(
        app,
        rules=rules,
        streams=lambda: hub.fanout.clients,
        stats=app[CONNECTIONS],
        handler_cancellation=True,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("pricectl.access"),
        shutdown_timeout=5.0,
    )
    await runner.setup()
    # asyncio accepts up to `backlog` connections per wake-up: a small batch, so the budget
    # sees each connection before the process runs out of descriptors; the kernel's queue
    # is then set long enough for a reconnect storm (descriptors.py).
    site = web.TCPSite(
        runner, host, port, reuse_port=reuse_port or None, backlog=descriptors.ACCEPT_BATCH
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    descriptors.deepen_listen_queue(getattr(site._server, "sockets", ()))
    bound = runner.addresses[0][1]
    return runner, int(bound)


# --- the serve process -------------------------------------------------------------------


async def serve_forever(
    settings: Settings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    simulate: bool = False,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """``pricectl serve``: bus, embedded relay (memory://), server; graceful on SIGTERM.

    Shutdown order: stop listening, send every client a jittered ``retry:``, close
    streams over ``server.drain_window``, stop the relay, close the bus.

    At start the open-file limit is raised to the hard limit, and the streams accepted
    are what fits in it (:mod:`pricectl.server.descriptors`). With ``simulate`` the
    local exchange (:mod:`pricectl.simulator`) runs in this process and the relay reads
    it: live prices with no network, and every page and health report says they are
    simulated. A listen that fails (port in use, a host that does not resolve) raises a
    :class:`~pricectl.errors.PricectlError` naming the address and the option.
    """
    from pricectl.bus import open_bus

    limit = descriptors.raise_open_file_limit()
    plan = descriptors.plan_connections(limit, settings.server.max_connections)
    descriptors.log_limit(limit, settings.server.max_connections, plan)
    if plan.lowered:
        server = dataclasses.replace(settings.server, max_connections=plan.streams)
        settings = dataclasses.replace(settings, server=server)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(descriptors.accept_error_handler(limit.soft))
    embedded = settings.bus.url.startswith("memory://")
    async with contextlib.AsyncExitStack() as stack:
        if simulate:
            settings = await _start_simulator(settings, stack)
        bus = open_bus(settings.bus.url, prefix=settings.bus.prefix)
        await bus.start()
        stack.push_async_callback(bus.close)
        holder = _RelayStatus(simulated=simulate) if embedded else None
        app = create_app(settings, bus, holder, simulated=simulate)
        hub = app[HUB]
        source = await _start_universe(settings, stack)
        hub.universe = lambda: source.universe
        hub.universe_missing = source.missing
        if holder is not None:
            holder.universe = hub.universe
        runner, bound = await _listen(app, host, port, reuse_port=reuse_port, budget=plan.waiting)
        stack.push_async_callback(runner.cleanup)
        # Everything made so far (modules, settings, the app) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which under
        # a churn of connections cut a 200 ms pause down to a few ms.
        gc.freeze()
        log.info(
            "serving on http://%s:%d (bus %s%s)%s",
            host,
            bound,
            redact_url(settings.bus.url),
            ", embedded relay" if embedded else "",
            f"; SIMULATED prices from the local exchange at {settings.exchange.ws_url}"
            if simulate
            else "",
        )
        if on_ready is not None:
            on_ready(bound)
        await _run_until_signalled(settings, hub, runner, bus, holder, simulate)
    log.info("stopped")


async def _run_until_signalled(
    settings: Settings,
    hub: Hub,
    runner: web.AppRunner,
    bus: Bus,
    holder: _RelayStatus | None,
    simulate: bool,
) -> None:
    """Serve (and run the embedded relay) until SIGTERM/SIGINT; then drain the streams."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay_task = None
    if holder is not None:
        relay_task = asyncio.create_task(
            _embedded_relay(settings, bus, holder, simulate), name="pricectl-relay"
        )
    stop_bound: Any = None
    try:
        await stop.wait()
        stop_bound = watchdog.arm(settings.server.drain_window + watchdog.GRACE)
        log.info(
            "shutting down: draining %d clients over %.1fs",
            hub.fanout.clients,
            settings.server.drain_window,
        )
        for site in list(runner.sites):
            await site.stop()
        await hub.drain(settings.server.drain_window)
    finally:
        if relay_task is not None:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if stop_bound is not None:
            stop_bound.cancel()


async def _listen(
    app: web.Application, host: str, port: int, *, reuse_port: bool, budget: int
) -> tuple[web.AppRunner, int]:
    """:func:`start_server`, with a failure to listen said in words that name the fix."""
    try:
        return await start_server(app, host, port, reuse_port=reuse_port, budget=budget)
    except (OSError, OverflowError) as exc:
        raise listen_error(host, port, exc) from None


def listen_error(host: str, port: int, exc: BaseException) -> PricectlError:
    """The error for a listen on ``host:port`` that failed with ``exc``: a usage error
    (exit 2) when the address is wrong, a runtime error (exit 1) when it is taken."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, OverflowError):
        return UsageError(f"--port must be 0 to 65535 (server.port), got {port}")
    if isinstance(exc, socket.gaierror):
        return UsageError(
            f"cannot listen on {where}: the host {host!r} does not resolve "
            f"({exc.strerror}); check --host (server.host)"
        )
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return PricectlError(
            f"cannot listen on {where}: the address is already in use (another pricectl "
            "serve?); stop it, or choose another --port (server.port)"
        )
    if code == errno.EADDRNOTAVAIL:
        return UsageError(
            f"cannot listen on {where}: {host} is not an address of this machine; "
            "check --host (server.host)"
        )
    if code == errno.EACCES:
        return UsageError(
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            "privileges); choose --port 1024 or above (server.port)"
        )
    reason = getattr(exc, "strerror", None) or str(exc)
    return PricectlError(f"cannot listen on {where}: {reason}")


async def _start_universe(settings: Settings, stack: contextlib.AsyncExitStack) -> UniverseSource:
    """Fetch exchangeInfo now and every ``exchange.universe_refresh`` (in the background):
    the pairs clients may ask for. Waits up to the REST timeout for the first answer."""
    from pricectl.exchange.binance_rest import BinanceRest

    rest = BinanceRest(settings.exchange, settings.pair_map)
    stack.push_async_callback(rest.close)
    source = UniverseSource(rest, settings.quote_aliases, settings.exchange.universe_refresh)
    task = asyncio.create_task(source.run(), name="pricectl-universe")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    await source.ready(min(settings.exchange.rest_timeout, 3.0))
    return source


async def _start_simulator(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    """Start the local exchange for ``--simulate``; the settings that point the relay at it."""
    from pricectl.simulator import Simulator, SimulatorConfig, symbols_for_pairs

    symbols = symbols_for_pairs(settings.pairs, dict(settings.quote_aliases))
    sim = Simulator(SimulatorConfig(symbols=symbols))
    await sim.start()
    stack.push_async_callback(sim.stop)
    exchange = dataclasses.replace(
        settings.exchange, ws_url=sim.ws_url, rest_url=sim.rest_url, check_symbols=False
    )
    return dataclasses.replace(settings, exchange=exchange)


#: What a newcomer with no network is told, once, when the exchange does not resolve.
OFFLINE_HINT = "no network? `pricectl serve --simulate` runs a local exchange"


async def _embedded_relay(
    settings: Settings, bus: Bus, holder: _RelayStatus, simulate: bool
) -> None:
    """The in-process relay for memory://, following this process's demand
    (``pricectl.ingest.demand.run_embedded_on_demand``), and
    beside it the one-time check that the exchange resolves.

    The relay's coroutine is made here, where it is awaited at once: made before the
    server listens, a failed listen would leave it never awaited (a RuntimeWarning).
    """
    from pricectl.ingest.demand import run_embedded_on_demand

    async with asyncio.TaskGroup() as tg:
        if not simulate:
            tg.create_task(
                say_if_offline(settings.exchange, OFFLINE_HINT, log),
                name="pricectl-offline-check",
            )
        tg.create_task(
            _guard_relay(
                run_embedded_on_demand(settings, bus, holder.universe, on_relay=holder.set)
            )
        )


class _RelayStatus:
    """Upstream status for /health while the embedded relay runs (before it starts: starting)."""

    def __init__(self, simulated: bool = False) -> None:
        self.relay: Relay | None = None
        self.simulated = simulated
        #: The servable pairs, for the embedded relay (set by serve_forever).
        self.universe: Callable[[], Any] = lambda: None

    def set(self, relay: Relay) -> None:
        self.relay = relay

    def status(self) -> Upstream:
        return Upstream(
            relay=None if self.relay is None else self.relay.status(),
            exchange="simulator" if self.simulated else None,
        )


async def _guard_relay(coro: Awaitable[None]) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("embedded relay stopped with an error; serving the last known prices")


def run_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """Fork ``workers`` serve processes sharing ``host:port`` (SO_REUSEPORT); wait for them.

    SIGTERM/SIGINT to the parent is passed to every worker, which drains as usual.
    Returns the exit status (0 when every worker exited cleanly).
    """
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child process
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                asyncio.run(serve_forever(settings, host, port, reuse_port=True))
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    log.info("started %d workers on %s:%d: %s", workers, host, port, children)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait itself
            continue
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(st)
        if code != 0:
            status = 1
            log.warning("worker %d exited with %d", pid, code)
            if remaining and code != -signal.SIGTERM:
                forward(signal.SIGTERM, None)
    return status

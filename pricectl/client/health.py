"""What ``pricectl health`` asks: a serve instance, Redis directly, or a proxy in front of serve.

- :func:`check_health`: the whole check the command runs (the command only parses its
  options and prints), from a :class:`HealthCheck`, to the document and its exit code.
- :func:`serve_health`: GET ``/api/market-data/health`` (docs/protocol.md, "Health"). serve
  answers 503 with the same JSON when it is down, so both 200 and 503 are read as a report.
- :func:`redis_health`: the same document built from Redis alone (leader key, epoch, the
  ``prices:latest`` hash and each entry's age), for when no serve is up or to check the
  bus independently of serve. Its status follows the rule serve uses
  (:func:`pricectl.core.health.judge`): ``down`` when Redis is unreachable or no pair is fresh,
  ``degraded`` when a pair is stale, missing or not live from the WebSocket (or no one
  holds the lease), else ``ok``.
- :func:`probe_through`: opens the stream directly and through a proxy at the same time
  and compares when the bytes arrive. A buffering proxy (nginx without
  ``proxy_buffering off``, a CDN, a compressing middlebox) holds the opening comment
  and batches events, which turns "sub-second" into "whenever a buffer fills"; the
  per-event delay (same event id, proxy arrival minus direct arrival) shows it plainly.
  The proxy is read the way a browser reads it: over HTTPS with the certificate checked
  (``cacert`` adds a CA, ``insecure`` skips the check), and over HTTP/2 when the proxy
  offers it in the TLS handshake (ALPN), since that is what a browser then uses and a
  proxy may buffer HTTP/2 streams differently. That side uses httpx (with h2): aiohttp,
  used everywhere else, speaks only HTTP/1.1. A proxy that cannot be reached or
  trusted is one verdict, "could not check", with the fix.

Exit codes (:func:`exit_code_for_status`): 0 ok, 1 degraded, 2 down or unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pricectl import __version__
from pricectl.client.sse import (
    StreamRefused,
    StreamUnreachable,
    base_url,
    describe_error,
    stream_url,
)
from pricectl.core.health import QUIET_LIMIT, judge, pair_state
from pricectl.core.sse import SSEDecoder
from pricectl.core.ticks import PriceUpdate, decode_update
from pricectl.errors import BusError, PricectlError

__all__ = [
    "HEALTH_PATH",
    "HealthCheck",
    "HealthReport",
    "StreamTiming",
    "check_health",
    "describe_tls_error",
    "exit_code_for_status",
    "judge_proxy",
    "pair_states",
    "probe_through",
    "proxy_ssl",
    "redis_health",
    "serve_health",
    "time_stream",
    "time_stream_h2",
]

HEALTH_PATH = "/api/market-data/health"

#: The proxy adds more than this to the first byte or to the median event: it buffers.
#: Loopback and a same-host proxy add milliseconds; a buffer adds a flush interval or
#: waits for kilobytes, which at our event sizes is seconds.
BUFFERING_THRESHOLD_S = 0.5


def exit_code_for_status(status: str) -> int:
    """0 ok, 1 degraded, 2 anything else (down, unknown)."""
    return {"ok": 0, "degraded": 1}.get(status, 2)


@dataclass(frozen=True)
class HealthCheck:
    """What to ask: serve at ``serve_url`` (or Redis at ``redis_url`` instead), and with
    ``through`` also whether the proxy there passes serve's stream through unbuffered."""

    serve_url: str
    pairs: tuple[str, ...]
    redis_url: str | None = None
    through: str | None = None
    #: The bus's key prefix and the age past which a price is stale (for ``redis_url``).
    prefix: str = ""
    stale_after: float = 30.0
    #: How long ``through`` listens, and how long serve may take to answer.
    window: float = 5.0
    timeout: float = 5.0
    #: For an https ``through``: a CA file to trust, or no certificate check at all.
    cacert: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class HealthReport:
    """The health document (docs/protocol.md, plus ``through`` when asked) and its exit
    code."""

    doc: dict[str, Any]
    exit_code: int

    @property
    def unreachable(self) -> bool:
        """Down without any pair to show: there is only the reasons to print."""
        return self.doc.get("status") == "down" and "pairs" not in self.doc


async def check_health(check: HealthCheck) -> HealthReport:
    """Run the check; exit code 0 ok, 1 degraded, 2 down or unreachable.

    An unreachable serve is a report (``down``, with the hint that fixes it), not an
    error. A proxy that buffers the stream, or a comparison that could not be made,
    makes the exit code at least 1.
    """
    doc: dict[str, Any]
    if check.redis_url:
        doc = await redis_health(
            check.redis_url, check.pairs, prefix=check.prefix, stale_after=check.stale_after
        )
    else:
        try:
            doc = await serve_health(check.serve_url, timeout=check.timeout)
        except PricectlError as exc:
            doc = {
                "status": "down",
                "origin": check.serve_url,
                "reasons": [f"{exc}; is `pricectl serve` running? start it or check --url"],
            }
    code = exit_code_for_status(str(doc.get("status")))
    if check.through:
        report = await probe_through(
            check.serve_url,
            check.through,
            list(check.pairs),
            check.window,
            cacert=check.cacert,
            insecure=check.insecure,
        )
        doc["through"] = report
        if report.get("buffers") is None or report.get("buffers"):
            code = max(code, 1)
    return HealthReport(doc, code)


async def serve_health(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The health document of the serve instance at ``url`` (base URL or the health URL).

    Raises :class:`StreamUnreachable` when nothing answers and :class:`StreamRefused`
    when something answers that is not serve's health endpoint.
    """
    base = base_url(url)
    target = base + HEALTH_PATH
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(target, headers={"Accept": "application/json"}) as resp,
        ):
            body = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StreamUnreachable(f"cannot reach {target}: {describe_error(exc)}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status not in (200, 503) or not isinstance(doc, dict) or "status" not in doc:
        raise StreamRefused(f"{target} answered HTTP {status} but not with a health report", status)
    doc.setdefault("origin", base)
    return doc


def pair_states(
    latest: Mapping[str, PriceUpdate | None], stale_after: float, now: float
) -> dict[str, dict[str, Any]]:
    """Per pair: age (seconds, from ``ingest_ns``/``event_ms`` to wall-clock ``now``),
    source, stale (the update's flag or older than ``stale_after``), price, epoch, seq."""
    return {pair: pair_state(update, stale_after, now) for pair, update in latest.items()}


async def redis_health(
    url: str,
    pairs: Iterable[str],
    *,
    prefix: str = "",
    stale_after: float = 30.0,
    now: float | None = None,
) -> dict[str, Any]:
    """The health document from Redis alone; ``status`` is ``down`` if Redis is unreachable
    or is a replica (no writable master).

    One round trip reads the lease (holder, epoch, time left), the leader's heartbeat key
    (its age from the key's own expiry, on Redis's clock: rewritten every second with a
    5 s expiry, so a leader that holds the lease but has stopped beating shows), the
    node's ROLE and the snapshot of ``pairs``. For a Sentinel URL the document also names
    the service and the master the sentinels gave.
    """
    from redis.exceptions import RedisClusterException, RedisError

    from pricectl.bus import keys
    from pricectl.bus.failures import explain
    from pricectl.bus.redis import HEARTBEAT_TTL_MS, connect_any, key_prefix
    from pricectl.config import redact_url

    wanted = list(pairs)
    where = redact_url(url)
    doc: dict[str, Any] = {"origin": where, "version": __version__}
    try:
        client: Any = connect_any(url, timeout=2.0)
    except BusError as exc:
        doc.update(status="down", reasons=[str(exc)], bus={"url": where, "connected": False})
        return doc
    cluster = client.target.kind == "cluster"
    kp = key_prefix(client, prefix)
    try:
        async with asyncio.timeout(2.0), client.pipeline(transaction=False) as pipe:
            pipe.get(keys.leader(kp))
            pipe.get(keys.epoch(kp))
            pipe.pttl(keys.leader(kp))
            pipe.get(keys.heartbeat(kp))
            pipe.pttl(keys.heartbeat(kp))
            if not cluster:  # a cluster client talks to the primaries only
                pipe.execute_command("ROLE")
            if wanted:
                pipe.hmget(keys.latest(kp), wanted)
            replies = list(await pipe.execute())
        if cluster:
            replies.insert(5, ["master"])
            info = await client.cluster_info()
            master = client.master_address(keys.leader(kp))
        else:
            master = client.master_address()
    except (BusError, RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        reason = explain(url, exc)
        extra: dict[str, Any] = {}
        if cluster:
            # The lease's shard did not answer; the nodes that do say why.
            state = await client.cluster_state()
            extra["cluster_state"] = state
            if state is not None and state != "ok":
                detail = str(exc).strip() or type(exc).__name__
                reason = (
                    f"the Redis Cluster at {where} is down (cluster_state {state}): the "
                    f"primary of the lease's slot and its replicas are gone ({detail})"
                )
        doc.update(
            status="down",
            reasons=[reason],
            bus={"url": where, "connected": False, **_target(client, None, None), **extra},
        )
        return doc
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    token, epoch, ttl_ms, beat, beat_ttl, role_reply = replies[:6]
    raw = replies[6] if wanted else []
    role = "replica" if role_reply and role_reply[0] == "slave" else str(role_reply[0])
    node = None
    if role == "replica" and len(role_reply) > 2:
        # A plain URL to a replica: the master is the one it follows, from its ROLE.
        node, master = master, f"{role_reply[1]}:{role_reply[2]}"
    heartbeat_age = (
        max(0.0, (HEARTBEAT_TTL_MS - int(beat_ttl)) / 1000.0)
        if beat is not None and int(beat_ttl) > 0
        else None
    )
    latest: dict[str, PriceUpdate | None] = {}
    bad: list[str] = []
    for pair, text in zip(wanted, raw, strict=True):
        try:
            latest[pair] = decode_update(text) if text is not None else None
        except ValueError:
            latest[pair] = None
            bad.append(pair)
    states = pair_states(latest, stale_after, time.time() if now is None else now)
    holder = token is not None
    # The health rule, the same one serve's health endpoint applies.
    status, reasons = judge(states, bus_connected=True, bus_role=role, leader=holder)
    if holder and (heartbeat_age is None or heartbeat_age > QUIET_LIMIT):
        reasons.append(
            f"the leader holds the lease but its heartbeat has not moved for {QUIET_LIMIT:g}s"
            " (frozen, or cut off from Redis?)"
        )
        if status == "ok":
            status = "degraded"
    reasons.extend(f"{p}: unreadable snapshot entry" for p in bad)
    epoch_value = int(epoch) if epoch else None
    if holder:
        leader: dict[str, Any] = {
            "identity": token,
            "epoch": epoch_value,
            "ttl_ms": int(ttl_ms),
            "heartbeat_age_s": None if heartbeat_age is None else round(heartbeat_age, 3),
        }
    else:
        leader = {"identity": None, "epoch": epoch_value, "heartbeat_age_s": None}
    doc.update(
        status=status,
        reasons=reasons,
        pairs=states,
        leader=leader,
        bus={
            "url": where,
            "connected": True,
            "epoch": epoch_value,
            **_target(client, role, master),
            **({"node": node} if node is not None else {}),
            **({"cluster_state": info.get("cluster_state")} if cluster else {}),
        },
        stale_after_s=stale_after,
    )
    return doc


def _target(client: Any, role: str | None, master: str | None) -> dict[str, Any]:
    """mode, role, master, and for Sentinel the service name and the sentinels."""
    target = client.target
    out: dict[str, Any] = {"mode": target.kind, "role": role, "master": master}
    if target.kind == "sentinel":
        out["service"] = target.service
        out["sentinels"] = [f"{h}:{p}" for h, p in target.hosts]
    return out


@dataclass
class StreamTiming:
    """When the bytes and events of one stream arrived (monotonic seconds since request)."""

    url: str
    ttfb: float | None = None
    first_event: float | None = None
    arrivals: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: The protocol the stream came over (``HTTP/1.1``, ``HTTP/2``), once it answered.
    http_version: str | None = None

    def gaps(self) -> list[float]:
        """Seconds between consecutive price events, in arrival order."""
        times = sorted(self.arrivals.values())
        return [b - a for a, b in itertools.pairwise(times)]


async def time_stream(
    session: aiohttp.ClientSession, url: str, pairs: Sequence[str], window: float
) -> StreamTiming:
    """Read the stream at ``url`` for ``window`` seconds, timing the first byte and each event."""
    timing = StreamTiming(url=stream_url(url, pairs))
    start = time.monotonic()
    deadline = start + window
    try:
        async with session.get(
            timing.url, headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        ) as resp:
            if resp.status != 200:
                timing.error = f"HTTP {resp.status}"
                return timing
            decoder = SSEDecoder()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), left)
                except TimeoutError:
                    break
                if not chunk:
                    break
                now = time.monotonic() - start
                if timing.ttfb is None:
                    timing.ttfb = now
                for event in decoder.feed(chunk):
                    if timing.first_event is None:
                        timing.first_event = now
                    if event.event == "price" and event.id:
                        timing.arrivals.setdefault(event.id, now)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        timing.error = str(exc) or type(exc).__name__
    return timing


def judge_proxy(direct: StreamTiming, proxy: StreamTiming, window: float) -> dict[str, Any]:
    """Whether the proxy buffers, with the numbers behind the verdict (pure)."""
    report: dict[str, Any] = {
        "direct": direct.url,
        "through": proxy.url,
        "http_version": proxy.http_version,
        "window_s": window,
        "ttfb_direct_s": direct.ttfb,
        "ttfb_through_s": proxy.ttfb,
        "events_direct": len(direct.arrivals),
        "events_through": len(proxy.arrivals),
    }
    reasons: list[str] = []
    if direct.error or direct.ttfb is None:
        report.update(
            buffers=None,
            ok=False,
            summary=f"the direct stream failed ({direct.error or 'no bytes'}): nothing to compare",
        )
        return report
    if proxy.error:
        report.update(
            buffers=None,
            ok=False,
            summary=f"could not check the proxy: the stream through it failed: {proxy.error}",
        )
        return report
    common = [i for i in direct.arrivals if i in proxy.arrivals]
    lags = [proxy.arrivals[i] - direct.arrivals[i] for i in common]
    median_lag = statistics.median(lags) if lags else None
    max_lag = max(lags) if lags else None
    report.update(matched=len(common), median_delay_s=median_lag, max_delay_s=max_lag)
    gd, gp = direct.gaps(), proxy.gaps()
    report.update(max_gap_direct_s=max(gd, default=None), max_gap_through_s=max(gp, default=None))
    if proxy.ttfb is None:
        reasons.append(f"no byte came through the proxy in {window:g}s")
    elif proxy.ttfb - direct.ttfb > BUFFERING_THRESHOLD_S:
        reasons.append(
            f"first byte {_ms(proxy.ttfb)} through the proxy vs {_ms(direct.ttfb)} direct"
        )
    if len(direct.arrivals) >= 2 and len(common) < len(direct.arrivals) / 2:
        reasons.append(
            f"only {len(proxy.arrivals)} of {len(direct.arrivals)} events came through in time"
        )
    if median_lag is not None and median_lag > BUFFERING_THRESHOLD_S:
        reasons.append(f"events arrive {_ms(median_lag)} later through the proxy (median)")
    buffers = bool(reasons)
    numbers = (
        f"first byte {_ms(direct.ttfb)} direct, "
        f"{_ms(proxy.ttfb) if proxy.ttfb is not None else 'never'} through the proxy; "
        f"{len(direct.arrivals)} events direct, {len(proxy.arrivals)} through"
    )
    if median_lag is not None and max_lag is not None:
        numbers += f"; delay per event median {_ms(median_lag)}, max {_ms(max_lag)}"
    if buffers:
        summary = "; ".join(reasons) + f" ({numbers})"
        summary += ". Turn buffering off for this path (nginx: proxy_buffering off)."
    else:
        summary = numbers
    report.update(buffers=buffers, ok=not buffers, reasons=reasons, summary=summary)
    return report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


async def time_stream_h2(
    url: str,
    pairs: Sequence[str],
    window: float,
    *,
    verify: ssl.SSLContext | bool = True,
) -> StreamTiming:
    """:func:`time_stream` through httpx, over HTTP/2 when the server offers it (ALPN)."""
    import httpx

    timing = StreamTiming(url=stream_url(url, pairs))
    start = time.monotonic()
    deadline = start + window
    timeout = httpx.Timeout(connect=min(10.0, window), read=window, write=window, pool=window)
    try:
        async with (
            httpx.AsyncClient(http2=True, verify=verify, timeout=timeout) as client,
            client.stream(
                "GET",
                timing.url,
                headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"},
            ) as resp,
        ):
            timing.http_version = resp.http_version
            if resp.status_code != 200:
                timing.error = f"HTTP {resp.status_code} ({resp.http_version})"
                return timing
            decoder = SSEDecoder()
            chunks = resp.aiter_raw()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(anext(chunks), left)
                except (TimeoutError, StopAsyncIteration):
                    break
                now = time.monotonic() - start
                if timing.ttfb is None:
                    timing.ttfb = now
                for event in decoder.feed(chunk):
                    if timing.first_event is None:
                        timing.first_event = now
                    if event.event == "price" and event.id:
                        timing.arrivals.setdefault(event.id, now)
    except httpx.HTTPError as exc:
        timing.error = describe_tls_error(exc) or (str(exc) or type(exc).__name__)
    except (OSError, ssl.SSLError) as exc:
        timing.error = describe_tls_error(exc) or str(exc)
    return timing


def describe_tls_error(exc: BaseException) -> str | None:
    """A certificate problem in words that name the fix, or None when it is not one."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, ssl.SSLCertVerificationError):
            reason = cur.verify_message or cur.reason or str(cur)
            return (
                f"its TLS certificate is not trusted ({reason}): pass --cacert FILE with the "
                "CA that signed it (for a self-signed one, the certificate itself), or "
                "--insecure to look without checking"
            )
        if isinstance(cur, ssl.SSLError):
            return f"TLS with the proxy failed ({cur.reason or cur}): is it https at that port?"
        cur = cur.__cause__ or cur.__context__
    return None


def proxy_ssl(cacert: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """What httpx verifies the proxy's certificate with: the system's CAs, plus ``cacert``
    when given; nothing at all with ``insecure``."""
    if insecure:
        return False
    context = ssl.create_default_context()
    if cacert:
        context.load_verify_locations(cafile=cacert)
    return context


async def probe_through(
    direct_url: str,
    proxy_url: str,
    pairs: Sequence[str],
    window: float = 5.0,
    *,
    cacert: str | None = None,
    insecure: bool = False,
) -> dict[str, Any]:
    """Stream directly and through ``proxy_url`` at once for ``window`` seconds; judge it.

    The direct stream is read with aiohttp, the proxy's with httpx (HTTP/2 when offered).
    """
    timeout = aiohttp.ClientTimeout(total=None, connect=min(10.0, window), sock_connect=window)
    verify = proxy_ssl(cacert, insecure)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as session:
        async with asyncio.TaskGroup() as tg:
            d = tg.create_task(time_stream(session, direct_url, pairs, window))
            p = tg.create_task(time_stream_h2(proxy_url, pairs, window, verify=verify))
        return judge_proxy(d.result(), p.result(), window)

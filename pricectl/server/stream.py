"""``GET /api/market-data/stream``: the SSE endpoint, exactly as documented
(docs/protocol.md, "The stream").

The handler validates the request, checks the limits, sends the headers and the
opening (comment, jittered ``retry:``, a snapshot or a replay), then hands the
transport to the hub's :class:`~pricectl.server.fanout.Fanout` and returns: the
fan-out writes to the transport itself and ends the stream, and aiohttp is told
the connection is no longer its own (:func:`_release`), so its request handler,
parser, request and response for this connection are freed. Keeping them for the
stream's life cost about 10 KB per connection, most of serve's memory budget;
without them a stream costs the socket, asyncio's transport and the fan-out's
small client record. The access log line of a stream is therefore written when
it is handed over.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from pricectl.core.history import parse_event_id
from pricectl.server.errors import bad_request
from pricectl.server.hub import Hub, Refusal
from pricectl.server.keys import HUB
from pricectl.server.sockets import bound_send_buffer, send_buffer_size

__all__ = ["activate", "parse_pairs", "refusal_response", "stream_handler"]

#: Longest ``pairs=`` query value accepted (50 pairs of up to 25 characters).
_MAX_PAIRS_PARAM = 1300

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


def parse_pairs(hub: Hub, request: web.Request) -> frozenset[str] | web.Response:
    """The requested pairs as canonical names (the pinned pairs when ``pairs`` is
    absent), or a 400: too many, malformed, or unknown (named, with the nearest names).

    Any TRADING spot pair of the exchange is accepted, in any usual spelling
    (``btcusdt``, ``BTC-USDT``, ``btc/usd``); :meth:`Hub.activate` then makes the
    inactive ones heard.
    """
    text = request.query.get("pairs")
    limit = hub.settings.server.max_pairs_per_connection
    if text is None or not text.strip():
        return frozenset(hub.pinned)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        return bad_request(
            "malformed_pair",
            f"pairs={text!r} names no pair: expected a comma-separated list such as "
            "BTC/USD,ETH/USD (or no pairs= at all for the pinned pairs)",
        )
    if len(text) > _MAX_PAIRS_PARAM and len(parts) <= limit:
        return bad_request(
            "malformed_pair",
            f"pairs= is too long ({len(text)} characters, at most {_MAX_PAIRS_PARAM}): "
            "a pair is BASE/QUOTE such as BTC/USD",
        )
    if len(parts) > limit or len(text) > _MAX_PAIRS_PARAM:
        return bad_request(
            "too_many_pairs", f"{len(parts)} pairs requested; at most {limit} per connection"
        )
    try:
        pairs = hub.resolve(parts)
    except Refusal as exc:
        return refusal_response(exc)
    return frozenset(pairs)


def refusal_response(exc: Refusal) -> web.Response:
    """The JSON error of a :class:`Refusal` (``Retry-After`` when it says when)."""
    body: dict[str, object] = {"error": exc.code, "detail": str(exc)}
    if exc.code == "unknown_pair":
        body["suggestions"] = list(exc.suggestions)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.json_response(body, status=exc.status, headers=headers)


async def activate(hub: Hub, request: web.Request, pairs: frozenset[str]) -> web.Response | None:
    """Make the requested pairs heard and wanted; the error response if refused."""
    try:
        await hub.activate(sorted(pairs), request.remote or "?")
    except Refusal as exc:
        if exc.status != 400:
            hub.count_rejected(exc.code)
        return refusal_response(exc)
    return None


def _wants_event_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


async def _turn_away(hub: Hub, request: web.Request, reason: str) -> web.StreamResponse:
    """Over a limit: EventSource gets 200 + a long jittered retry (a 503 would make the
    browser give up for good); any other client gets 503 with Retry-After."""
    hub.count_rejected(reason)
    overload = hub.settings.server.overload_retry
    if not _wants_event_stream(request):
        return web.json_response(
            {"error": "overloaded", "detail": f"{reason}: try again later"},
            status=503,
            headers={"Retry-After": str(max(1, round(overload)))},
        )
    body = b": %s\nretry: %d\n\n" % (reason.encode(), hub.retry_ms(overload))
    resp = web.Response(body=body, headers=SSE_HEADERS)
    resp.force_close()
    return resp


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """The SSE stream; see the module docstring and docs/protocol.md."""
    hub = request.app[HUB]
    pairs = parse_pairs(hub, request)
    if isinstance(pairs, web.Response):
        return pairs
    last_id = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or None
    try:
        if last_id:
            parse_event_id(last_id)
    except ValueError as exc:
        return bad_request("malformed_event_id", str(exc))
    ip = request.remote or "?"
    reason = hub.admit(ip, len(pairs))
    if reason is not None:
        return await _turn_away(hub, request, reason)
    refused = await activate(hub, request, pairs)
    if refused is not None:
        return refused

    s = hub.settings.server
    if request.transport is not None:
        bound_send_buffer(request.transport, send_buffer_size(s.send_buffer, s.high_water))
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    chunked = request.version >= HttpVersion11
    if chunked:
        resp.enable_chunked_encoding()
    resp.force_close()
    await resp.prepare(request)
    transport = request.transport
    protocol = request.protocol
    if transport is None or transport.is_closing() or protocol.transport is None:
        return resp
    # From here to attach nothing awaits, so no update can fall between opening and live.
    opening = hub.opening(pairs, last_id)
    first = b": ok\nretry: %d\n\n%b" % (hub.retry_ms(), opening)
    hub.fanout.attach(transport, pairs, chunked, ip, first)
    _release(protocol)
    return resp


def _release(protocol: Any) -> None:
    """Make aiohttp let go of a connection the fan-out has taken over, without closing it.

    The transport's protocol is already the fan-out's client; with the handler's
    ``transport`` cleared, aiohttp's own ``connection_lost`` only drops the
    connection from the server's list, cancels its keep-alive timer and frees the
    parser. (It also cancels this request's task, which is ending anyway: the
    handler does not await after this. Ending the response then fails to write
    the last chunk, which aiohttp takes as a client gone; the fan-out writes that
    chunk itself when it ends the stream.)
    """
    protocol.transport = None
    protocol.connection_lost(None)

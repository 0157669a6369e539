"""An SSE client for ``GET /api/market-data/stream`` that behaves like a careful EventSource.

What it does, and why (docs/protocol.md and WHATWG HTML 9.2):

- parses the body with the core :class:`~pricectl.core.sse.SSEDecoder` (bytes in any
  split, events out), so the browser, ``tail`` and ``loadtest`` agree on the wire format;
- reconnects after a drop, waiting the larger of the server's ``retry:`` hint and the
  core full-jitter :class:`~pricectl.core.backoff.Backoff` delay, so a fleet of clients
  neither hammers a restarting server nor waits longer than it asked;
- sends ``Last-Event-ID`` on reconnect, so the server replays from its history ring or
  sends the snapshot again; either way the client's
  :class:`~pricectl.core.sequence.SequenceTracker` marks replays it already showed as
  duplicates or repeats and jumps as gaps or resyncs;
- treats nothing-at-all for ``idle_timeout`` (no event, no ``: ping``) as a dead
  connection and reconnects;
- fails at once, without retrying, on what retrying cannot fix: a 400 (unknown pair:
  :class:`StreamRefused`, exit 2), a URL that is not an SSE stream (404, HTML: exit 2),
  and, when ``fail_fast`` is set, a server that cannot be reached on the very first
  attempt (:class:`StreamUnreachable`, exit 1). Once connected, outages are retried.

Use::

    async with SSEClient("http://127.0.0.1:8000", ["BTC/USD"]) as client:
        async for event in client.events():
            ...   # Price, Connected, Disconnected, Notice (pricectl.client.events)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from enum import Enum
from types import TracebackType
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from pricectl.client.events import (
    Clock,
    Connected,
    Disconnected,
    Notice,
    Price,
    Stale,
    StreamEvent,
)
from pricectl.core.api import STREAM_PATH
from pricectl.core.backoff import Backoff, BackoffPolicy
from pricectl.core.sequence import SequenceTracker
from pricectl.core.sse import SSEDecoder, SSEEvent
from pricectl.core.ticks import decode_update
from pricectl.errors import PricectlError, UsageError

__all__ = [
    "ConnState",
    "SSEClient",
    "StreamRefused",
    "StreamUnreachable",
    "base_url",
    "describe_error",
    "local_url",
    "stream_url",
]

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class StreamRefused(UsageError):
    """The server refused the request in a way retrying cannot fix (bad pair, wrong URL)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StreamUnreachable(PricectlError):
    """The server could not be reached on the first attempt (connection refused, timeout)."""


class ConnState(Enum):
    """Where the client is: shown in ``tail``'s status line."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


def stream_url(url: str, pairs: Sequence[str]) -> str:
    """The stream URL for ``pairs``: ``url`` may be the server's base URL or the stream URL.

    ``http://127.0.0.1:8000`` -> ``http://127.0.0.1:8000/api/market-data/stream?pairs=BTC/USD``.
    A bare ``host:port`` gets ``http://``. Any other path is kept, so a wrong one shows up as
    the server's 404 instead of being silently corrected.
    """
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not an http(s) URL: {url!r} (expected e.g. http://127.0.0.1:8000)")
    path = parts.path if parts.path not in ("", "/") else STREAM_PATH
    query = urlencode({"pairs": ",".join(pairs)}, safe="/,")
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def base_url(url: str) -> str:
    """``scheme://host:port`` of ``url`` (adds ``http://`` to a bare ``host:port``)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def local_url(host: str, port: int) -> str:
    """Where a client on this host reaches a serve bound to ``host:port``: a wildcard
    bind (``0.0.0.0``, ``::``) listens on loopback too, so it is asked at 127.0.0.1."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


class SSEClient:
    """One logical subscription to the price stream, kept alive across reconnects.

    ``events()`` yields :mod:`pricectl.client.events` values until :meth:`close` or the
    consumer stops iterating. ``max_reconnects`` (None: forever) bounds how many times
    it tries again before raising :class:`StreamUnreachable`.
    """

    def __init__(
        self,
        url: str,
        pairs: Sequence[str],
        *,
        session: aiohttp.ClientSession | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float = 45.0,
        fail_fast: bool = True,
        max_reconnects: int | None = None,
        last_event_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = stream_url(url, pairs)
        self.pairs = tuple(pairs)
        self._session = session
        self._own_session = session is None
        self.backoff = backoff if backoff is not None else Backoff(BackoffPolicy())
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.fail_fast = fail_fast
        self.max_reconnects = max_reconnects
        self.headers = dict(headers or {})
        #: The last event id received; sent as ``Last-Event-ID`` on reconnect.
        self.last_event_id = last_event_id
        #: The server's last ``retry:`` in milliseconds (None until it sends one).
        self.retry_ms: int | None = None
        self.tracker = SequenceTracker()
        self.state = ConnState.CONNECTING
        self.reconnects = 0
        #: Bytes and events received over all connections, for summaries.
        self.bytes_received = 0
        self.events_received = 0
        self._closed = False

    async def __aenter__(self) -> SSEClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: ``events()`` ends, and the session is closed if this client made it."""
        self._closed = True
        self.state = ConnState.CLOSED
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout
            )
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def events(self) -> AsyncIterator[StreamEvent]:
        """Open the stream and yield events, reconnecting after drops (see the module doc)."""
        ever_connected = False
        while not self._closed:
            reason: str
            retry_after = 0.0
            try:
                async for event in self._one_connection():
                    ever_connected = True
                    yield event
                reason = "the server closed the stream"
            except StreamRefused:
                raise
            except _Retry as exc:
                reason, retry_after = exc.reason, exc.retry_after
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = describe_error(exc)
                if not ever_connected and self.fail_fast:
                    self.state = ConnState.CLOSED
                    raise StreamUnreachable(f"cannot connect to {self.url}: {reason}") from None
            if self._closed:
                break
            if self.max_reconnects is not None and self.reconnects >= self.max_reconnects:
                self.state = ConnState.CLOSED
                raise StreamUnreachable(
                    f"gave up on {self.url} after {self.reconnects} reconnects: {reason}"
                )
            delay = max(
                retry_after,
                (self.retry_ms or 0) / 1000.0,
                self.backoff.next_delay(time.monotonic()),
            )
            self.reconnects += 1
            self.state = ConnState.RECONNECTING
            yield Disconnected(reason=reason, retry_in=delay, reconnects=self.reconnects)
            await asyncio.sleep(delay)

    async def _one_connection(self) -> AsyncIterator[StreamEvent]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self.headers}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        session = self._get_session()
        try:
            resp_cm = session.get(self.url, headers=headers)
        except (aiohttp.InvalidURL, ValueError) as exc:
            raise StreamRefused(f"invalid URL {self.url!r}: {exc}") from None
        async with resp_cm as resp:
            await self._check_response(resp)
            self.state = ConnState.LIVE
            self.backoff.connected(time.monotonic())
            yield Connected(
                source=self.url,
                reconnects=self.reconnects,
                resumed_from=headers.get("Last-Event-ID"),
            )
            decoder = SSEDecoder()
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), self.idle_timeout)
                except TimeoutError:
                    raise _Retry(f"nothing received for {self.idle_timeout:g}s") from None
                if not chunk:
                    return
                self.bytes_received += len(chunk)
                for sse in decoder.feed(chunk):
                    if decoder.retry is not None:
                        self.retry_ms = decoder.retry
                    if sse.id is not None:
                        self.last_event_id = sse.id
                    self.events_received += 1
                    yield self._to_event(sse)
                if decoder.retry is not None:
                    self.retry_ms = decoder.retry

    async def _check_response(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        ctype = resp.headers.get("Content-Type", "")
        if status == 200 and ctype.startswith("text/event-stream"):
            return
        body = (await resp.content.read(4096)).decode("utf-8", "replace")
        if status in _RETRYABLE_STATUS:
            detail = f": {_error_text(body)}" if body.strip() else ""
            raise _Retry(
                f"HTTP {status} from the server{detail}",
                _retry_after(resp.headers.get("Retry-After")),
            )
        if status == 400:
            raise StreamRefused(f"{_error_text(body)} (refused by {self.url})", status)
        if status == 200:
            raise StreamRefused(
                f"{self.url} is not an SSE stream (Content-Type {ctype or 'missing'}): "
                "check --url, it should be the serve address such as http://127.0.0.1:8000",
                status,
            )
        raise StreamRefused(
            f"HTTP {status} from {self.url}: {_error_text(body)}; check --url, it should be "
            "the serve address such as http://127.0.0.1:8000",
            status,
        )

    def _to_event(self, sse: SSEEvent) -> StreamEvent:
        if sse.event in ("clock", "stale"):
            marker = _marker(sse)
            if marker is not None:
                return marker
        if sse.event not in ("price", "snapshot"):
            return Notice(kind=sse.event, detail=sse.data)
        try:
            update = decode_update(sse.data)
        except ValueError as exc:
            return Notice(kind="malformed", detail=f"{exc}: {sse.data[:200]}")
        snapshot = sse.event == "snapshot"
        check = self.tracker.check(update.pair, update.epoch, update.seq, snapshot=snapshot)
        return Price(
            update=update,
            check=check,
            snapshot=snapshot,
            event_id=sse.id,
            received=time.monotonic(),
            received_ns=time.time_ns(),
        )


def _marker(sse: SSEEvent) -> Clock | Stale | None:
    """``event: clock`` / ``event: stale`` (docs/protocol.md); None if malformed."""
    try:
        data = json.loads(sse.data)
        if sse.event == "clock":
            return Clock(server_ms=int(data["server_ms"]), received_ns=time.time_ns())
        return Stale(
            pair=str(data["pair"]),
            reason=str(data.get("reason", "")),
            epoch=int(data.get("last_epoch", 0)),
            seq=int(data.get("last_seq", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None


class _Retry(Exception):
    """This connection failed in a way worth retrying (after ``retry_after`` at least)."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _error_text(body: str) -> str:
    """The server's ``{"error", "detail"}`` as one line, or the start of the body."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "error" in obj:
        return str(obj.get("detail") or obj["error"])
    text = " ".join(body.split())
    return text[:160] or "no body"


def describe_error(exc: BaseException) -> str:
    """A short reason for a connection failure (``connection refused``, ``timed out``)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        inner = exc.os_error
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        text = inner.strerror if getattr(inner, "strerror", None) else str(inner)
        return str(text).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the stream was cut off"
    return str(exc) or type(exc).__name__

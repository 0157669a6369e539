"""serve's HTTP connections before a stream takes them over: deadlines, budget, bad requests.

aiohttp's :class:`~aiohttp.web_protocol.RequestHandler` reads requests off a connection.
Left at its defaults it lets a client hold a connection forever by sending its request
head one byte a second (slowloris), keeps an idle connection 75 s, answers a request it
cannot parse in plain text and logs a traceback for each one. :class:`ServeProtocol` is
that handler with serve's rules:

- **A deadline for the request head** (``server.request_head_timeout``, a few seconds):
  from the moment the connection is made, or the first byte of the next request on a
  kept-alive connection, the head must be complete in time, or the connection is closed.
- **A short idle keep-alive** (``server.keepalive_timeout``): an idle connection between
  requests is closed after it.

  Both ride on aiohttp's own keep-alive timer (one timer per connection, which closes
  the connection only while it is waiting for a request), so a request being handled,
  and a stream, are never cut by them: a stream's connection leaves aiohttp altogether
  when the fan-out takes it over (``stream.py``), timer included.
- **A bad request is one log line**, escaped, without a traceback, rate-limited per cause
  (an attacker's 10,000 malformed requests a second write one line per cause per
  interval), and it is answered with the API's JSON error body
  (``{"error": ..., "detail": ...}``), never with text from the request in it.
- **A connection budget.** Every connection costs a file descriptor, and when the
  process runs out of them nobody can connect, ``/health`` included. The budget
  (:mod:`pricectl.server.descriptors` sizes it from the open-file limit) counts the
  connections aiohttp holds and the streams the fan-out holds; a connection that would
  go over it makes room by closing the connection that has waited longest for a
  request head (an idle or half-sent one: the cheapest to lose, and what a slowloris
  attack is made of). A connection in the middle of a request, and a stream, are never
  closed for it.

The handler reaches into a few of aiohttp's private attributes (the keep-alive timer and
its close time, the waiter for the next request, the queue of parsed requests); the
tests in ``tests/server/test_edge.py`` pin what this module relies on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from pricectl.logs import RateLimitedLog, escape

__all__ = [
    "SERVER_HEADER",
    "ConnectionRules",
    "ConnectionStats",
    "ErrorResponse",
    "ServeProtocol",
    "ServeRunner",
    "ServeServer",
    "classify",
]

log = logging.getLogger("pricectl.server.connections")

#: The ``Server`` header of every response: the product, never a version (a version
#: tells an attacker which advisories apply).
SERVER_HEADER = "pricectl"

#: Seconds between two log lines about the same cause of bad requests or timeouts.
LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ConnectionRules:
    """The deadlines and the budget of serve's connections (seconds, connections)."""

    #: From connect (or the first byte of a next request) to a complete request head.
    head_timeout: float = 5.0
    #: An idle kept-alive connection between requests.
    keepalive_timeout: float = 10.0
    #: Open connections (streams included) above which those waiting for a request head
    #: are closed, longest waiting first (0: no budget). A margin below the real budget
    #: (:mod:`pricectl.server.descriptors`), for connections accepted but not yet seen.
    budget: int = 0


@dataclass
class ConnectionStats:
    """What happened to connections before a handler had them (for ``/metrics``)."""

    head_timeouts: int = 0
    idle_timeouts: int = 0
    #: Closed to keep the connection budget (they had waited longest for a request).
    evicted: int = 0
    #: Requests refused before reaching a handler, by error code.
    bad_requests: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        """The counters in the Prometheus text format."""
        lines = [
            "# HELP pricectl_connections_closed_total Connections serve closed before a "
            "request completed, by reason.",
            "# TYPE pricectl_connections_closed_total counter",
            f'pricectl_connections_closed_total{{reason="head_timeout"}} {self.head_timeouts}',
            f'pricectl_connections_closed_total{{reason="idle_timeout"}} {self.idle_timeouts}',
            f'pricectl_connections_closed_total{{reason="budget"}} {self.evicted}',
            "# HELP pricectl_bad_requests_total Requests refused before reaching a handler "
            "(malformed HTTP), by error.",
            "# TYPE pricectl_bad_requests_total counter",
        ]
        lines += [
            f'pricectl_bad_requests_total{{error="{error}"}} {n}'
            for error, n in sorted(self.bad_requests.items())
        ]
        return "\n".join(lines) + "\n"


class ErrorResponse(web.Response):
    """A response serve wrote for a request it could not take (the access log skips it:
    :class:`ServeProtocol` has logged it already, rate-limited)."""


def classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """``(status, error code, detail)`` for a request aiohttp could not parse or handle.

    The detail is a fixed sentence: nothing from the request is echoed back.
    """
    if isinstance(exc, LineTooLong):
        return 431, "header_too_large", "the request line or a header is longer than 8190 bytes"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_method", "the request line does not start with an HTTP method"
    if isinstance(exc, BadStatusLine):
        return 400, "bad_request_line", "the request line is not valid HTTP/1.1"
    if isinstance(exc, InvalidURLError):
        return 400, "bad_url", "the request target is not a valid URL path"
    if isinstance(exc, InvalidHeader):
        return 400, "bad_header", "a header is not valid HTTP/1.1"
    if isinstance(exc, HttpProcessingError):
        if "Too many headers" in (exc.message or ""):
            return 431, "too_many_headers", "the request has more than 128 headers"
        return 400, "bad_request", "the request is not valid HTTP/1.1"
    if status == 504:
        return 504, "timeout", "the request took too long"
    return 500, "internal", "internal server error"


def _error_response(status: int, error: str, detail: str) -> ErrorResponse:
    import json

    resp = ErrorResponse(
        status=status,
        text=json.dumps({"error": error, "detail": detail}),
        content_type="application/json",
        headers={"Server": SERVER_HEADER, "X-Content-Type-Options": "nosniff"},
    )
    resp.force_close()
    return resp


class ServeProtocol(RequestHandler):
    """aiohttp's request handler with serve's deadlines and bad-request rule (module doc)."""

    __slots__ = ("_head_armed",)

    _manager: ServeServer | None

    def __init__(self, manager: ServeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        #: True while a request head is on its way under the head deadline.
        self._head_armed = False

    # --- deadlines -----------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        """Close the connection at ``now + delay`` if it is still waiting for a request."""
        loop = self._loop
        at = loop.time() + delay
        self._next_keepalive_close_time = at
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._keepalive_handle = loop.call_at(at, self._process_keepalive)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        head_timeout = manager.rules.head_timeout if manager is not None else 0.0
        if head_timeout > 0:
            # aiohttp starts its keep-alive timer here: make its first deadline the head's
            # (jittered by up to a fifth, so connections made together are not all closed
            # in the same instant, and their reconnects do not arrive as one wave).
            keepalive = self._keepalive_timeout
            self._keepalive_timeout = head_timeout * (1.0 + 0.2 * random.random())
            self._head_armed = True
            super().connection_made(transport)
            self._keepalive_timeout = keepalive
        else:
            super().connection_made(transport)
        if manager is None:
            return
        manager.waiting(self)
        manager.make_room(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        manager = self._manager
        if manager is not None:
            manager.not_waiting(self)
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """No request parsed, none being handled: all this connection holds is a head to be."""
        waiter = self._waiter
        return (
            not self._messages
            and not self._request_in_progress
            and (waiter is None or not waiter.done())
        )

    def data_received(self, data: bytes) -> None:
        idle = self._waiting_for_head()
        super().data_received(data)
        manager = self._manager
        if manager is None:
            return
        if not self._waiting_for_head():
            self._head_armed = False  # a complete request: aiohttp's timer takes over again
            manager.not_waiting(self)
        elif idle and data and not self._head_armed and manager.rules.head_timeout > 0:
            # The first bytes of a next request on a kept-alive connection.
            self._head_armed = True
            self._arm(manager.rules.head_timeout)

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: Any) -> None:
        # Called once a response is written: a kept-alive connection waits again, newest.
        super().log_access(request, response, time)
        manager = self._manager
        if manager is not None and not self._force_close and not self._close:
            manager.not_waiting(self)
            manager.waiting(self)

    def _process_keepalive(self) -> None:
        was_closing = self._force_close
        manager = self._manager
        head = self._head_armed
        super()._process_keepalive()
        if self._force_close and not was_closing and manager is not None:
            manager.count_timeout("head" if head else "idle")

    # --- bad requests --------------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """One escaped, rate-limited line and the JSON error body (no traceback, no page)."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send an error response")
        code, error, detail = classify(exc, status)
        manager = self._manager
        if manager is not None:
            manager.count_bad_request(error)
            rlog = manager.rlog
            remote = escape(request.remote or "?", 64)
            if code >= 500 and exc is not None:
                if rlog.gate.allow(f"error:{error}", rlog._clock()):
                    log.error("error handling a request from %s", remote, exc_info=exc)
            else:
                what = escape(getattr(exc, "message", None) or message or "", 160)
                rlog.info(f"bad:{error}", "bad request from %s: %s (%s)", remote, error, what)
        return _error_response(code, error, detail)


class ServeServer(Server):
    """aiohttp's connection factory, making :class:`ServeProtocol` s and keeping the budget."""

    def __init__(
        self,
        handler: Any,
        *,
        rules: ConnectionRules,
        streams: Callable[[], int] = lambda: 0,
        stats: ConnectionStats | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.rules = rules
        #: Open streams (connections the fan-out has taken over from aiohttp).
        self._streams = streams
        self.rlog = RateLimitedLog(log, LOG_INTERVAL)
        self.stats = stats if stats is not None else ConnectionStats()
        #: Connections waiting for a request head, longest waiting first.
        self._waiting: dict[ServeProtocol, None] = {}

    def __call__(self) -> RequestHandler:
        return ServeProtocol(self, loop=self._loop, **self._kwargs)

    def count_timeout(self, kind: str) -> None:
        """A connection closed by a deadline (``head`` or ``idle``)."""
        stats = self.stats
        if kind == "head":
            stats.head_timeouts += 1
            self.rlog.info(
                "timeout:head",
                "closed a connection that sent no complete request head within %gs (%d so far)",
                self.rules.head_timeout,
                stats.head_timeouts,
            )
        else:
            stats.idle_timeouts += 1

    def count_bad_request(self, error: str) -> None:
        """A request answered with an error before reaching a handler, by error code."""
        bad = self.stats.bad_requests
        bad[error] = bad.get(error, 0) + 1

    def waiting(self, handler: ServeProtocol) -> None:
        """``handler`` waits for a request head (newest last)."""
        self._waiting[handler] = None

    def not_waiting(self, handler: ServeProtocol) -> None:
        """``handler`` has a request, or is gone."""
        self._waiting.pop(handler, None)

    def make_room(self, newcomer: ServeProtocol) -> None:
        """Keep the open connections within the budget: close those waiting longest for a
        request head (never ``newcomer``, a request in progress, or a stream).

        The waiting connections are kept in the order they began to wait, so this costs
        one step per connection closed, however many are open.
        """
        budget = self.rules.budget
        if budget <= 0:
            return
        over = len(self._connections) + self._streams() - budget
        if over <= 0:
            return
        waiting = self._waiting
        while over > 0 and len(waiting) > 1:
            handler = next(iter(waiting))
            del waiting[handler]
            if handler is newcomer:
                waiting[handler] = None  # to the back: it has only just arrived
                continue
            if handler._force_close or not handler._waiting_for_head():
                continue  # closing already, or has a request after all
            handler.force_close()
            self.stats.evicted += 1
            over -= 1
        self.rlog.warning(
            "budget",
            "at the connection budget (%d, from the open-file limit): closing the "
            "connections that waited longest for a request, to let new ones in (%d so far)",
            budget,
            self.stats.evicted,
        )


class ServeRunner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` whose connections are :class:`ServeProtocol` s."""

    def __init__(
        self,
        app: web.Application,
        *,
        rules: ConnectionRules,
        streams: Callable[[], int] = lambda: 0,
        stats: ConnectionStats | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._rules = rules
        self._streams = streams
        self._stats = stats

    async def _make_server(self) -> Server:
        # aiohttp's own (it runs the app's start-up), then the same server as ours.
        base = await super()._make_server()
        kwargs = dict(base._kwargs)
        kwargs["keepalive_timeout"] = self._rules.keepalive_timeout
        return ServeServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            rules=self._rules,
            streams=self._streams,
            stats=self._stats,
            **kwargs,
        )

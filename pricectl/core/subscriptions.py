"""Which stream goes on which WebSocket connection, and what to send to get it there.

Binance caps one connection at 1,024 streams, cuts a connection that sends more than 5
messages a second (pings and pongs count), refuses URLs of more than about 8,000
characters, and third parties report that SUBSCRIBE frames with hundreds of streams go
unanswered (docs/binance.md §2, §3). :class:`SubscriptionPlan` keeps a set of streams
within all of that, with no I/O: the adapter opens the connections it names, sends the
requests it hands out, and reports what came back.

- **Shards.** :meth:`SubscriptionPlan.set_streams` gives the wanted streams. Each stream
  lives on one shard of at most ``streams_per_connection`` streams and stays there
  while it is wanted; a new stream fills the first shard with room, a new shard is
  made when none has any (shard ids are never reused). A shard left empty is dropped
  (shard 0 always stays, so there is one connection even with nothing to carry).
- **Connections.** A shard is carried by one connection, two while make-before-break
  replaces it. :meth:`~SubscriptionPlan.opened` registers one with the streams its URL
  named (:meth:`~SubscriptionPlan.url_streams`: the shard's first streams that fit in
  ``url_chars`` characters, never a long combined-stream URL); the rest is subscribed.
- **Requests.** :meth:`~SubscriptionPlan.next_request` is the next control message for
  one connection: UNSUBSCRIBE of what it carries and its shard no longer wants first
  (it frees room), then SUBSCRIBE of what the shard wants and it does not carry yet,
  at most ``streams_per_message`` streams and ``message_bytes`` bytes per message, and
  never more than 1,024 streams carried at once. ``None`` when nothing is to be sent,
  or the connection's send window is full.
- **Pacing.** Per connection, at most ``floor(messages_per_second)`` messages we send
  in any ``1 + SEND_SLACK_S`` seconds, pongs included (:meth:`~SubscriptionPlan.pong`),
  and control messages one fewer, so that the pong owed to a server ping always fits
  (below 1 message/s: one per ``1 / rate`` seconds, with no room kept for a pong).
- **Replies.** A request counts as done only when the exchange answered its ``id`` with
  ``result``. An error reply, or no reply within ``reply_timeout``
  (:meth:`~SubscriptionPlan.expire`), puts its streams back to be sent again after a
  delay (per stream, doubling from ``retry_initial`` up to ``retry_max`` with each
  failure in a row); they go out again in messages half the size of the one that
  failed, so one refused name cannot hold back a batch for ever (it ends up alone,
  retried at its own pace while the others go live), and a frame too big to be
  answered gets answered once split.

Pure: time is ``now`` (monotonic seconds)::

    plan = SubscriptionPlan(streams_per_connection=2)
    plan.set_streams(["a@ticker", "b@ticker", "c@ticker"])
    plan.shards()                       # (0, 1)
    plan.opened(1, shard=0, url_streams=plan.url_streams(0), now=0.0)
    plan.next_request(1, now=0.0)       # None: the URL carried both
    plan.opened(2, shard=1, url_streams=[], now=0.0)
    req = plan.next_request(2, now=0.0)  # SUBSCRIBE ["c@ticker"], id 1
    plan.reply(2, req.id, None, now=0.1)
    plan.carried(2)                     # {"c@ticker"}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pricectl.core.ratelimit import SlidingWindow

__all__ = [
    "MAX_STREAMS_PER_CONNECTION",
    "SEND_SLACK_S",
    "Outcome",
    "Request",
    "SubscriptionPlan",
]

#: Binance's cap on the streams of one connection.
MAX_STREAMS_PER_CONNECTION = 1024

#: Added to the 1 s send window: Binance counts messages as they *arrive*, so a burst
#: delayed in the network must not land in the same second as the next one.
SEND_SLACK_S = 0.25

# The JSON around the names: {"method":"UNSUBSCRIBE","params":[],"id":NNNNNNNNNN}.
_ENVELOPE_BYTES = 50


@dataclass(frozen=True, slots=True)
class Request:
    """One control message to send on connection ``conn``: ``method`` with ``streams``."""

    conn: int
    id: int
    method: str
    streams: tuple[str, ...]
    sent_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reply (or its absence) did to a request, for the adapter's log line."""

    request: Request
    ok: bool
    #: Why not: the error's code and message, or ``"no reply within Ns"``.
    error: str | None = None
    #: When its streams may be sent again (``None`` for a success).
    retry_at: float | None = None


@dataclass
class _Conn:
    shard: int
    sends: SlidingWindow
    controls: SlidingWindow
    #: Streams the exchange confirmed this connection carries.
    carried: set[str] = field(default_factory=set)
    #: Requests sent and not answered yet, by id.
    pending: dict[int, Request] = field(default_factory=dict)
    #: Control messages and pongs sent, and requests that failed, for status.
    messages: int = 0
    pongs: int = 0
    errors: int = 0


class SubscriptionPlan:
    """The wanted streams, their shards, and each connection's requests (module docstring)."""

    def __init__(
        self,
        *,
        streams_per_connection: int = 200,
        messages_per_second: float = 4.0,
        streams_per_message: int = 100,
        message_bytes: int = 4000,
        url_chars: int = 2000,
        reply_timeout: float = 5.0,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        if not 1 <= streams_per_connection <= MAX_STREAMS_PER_CONNECTION:
            raise ValueError(
                f"streams_per_connection must be 1 to {MAX_STREAMS_PER_CONNECTION}, "
                f"got {streams_per_connection}"
            )
        if not (messages_per_second > 0 and math.isfinite(messages_per_second)):
            raise ValueError(f"messages_per_second must be above 0, got {messages_per_second}")
        if streams_per_message < 1:
            raise ValueError(f"streams_per_message must be at least 1, got {streams_per_message}")
        if message_bytes < _ENVELOPE_BYTES + 64:
            raise ValueError(f"message_bytes must be at least 114, got {message_bytes}")
        if not (reply_timeout > 0 and 0 < retry_initial <= retry_max):
            raise ValueError("reply_timeout, retry_initial and retry_max must be > 0, in order")
        self.streams_per_connection = streams_per_connection
        #: Messages we send per window of ``window`` seconds (4/s: 4 per 1.25 s; below
        #: 1/s: one per ``1 / rate`` seconds, slack added).
        self.send_limit = max(1, int(messages_per_second))
        self.window = 1.0 if messages_per_second >= 1 else 1.0 / messages_per_second
        self.window += SEND_SLACK_S
        #: Control messages per window: one less than the limit, leaving room for a pong.
        self.control_limit = max(1, self.send_limit - 1)
        self.streams_per_message = streams_per_message
        self.message_bytes = message_bytes
        self.url_chars = url_chars
        self.reply_timeout = reply_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._shards: dict[int, dict[str, None]] = {0: {}}
        #: Shard ids are never reused: a connection of a dropped shard cannot be planned
        #: against a newer one.
        self._next_shard = 1
        self._shard_of: dict[str, int] = {}
        self._conns: dict[int, _Conn] = {}
        #: Per stream that failed: failures in a row, the most streams its next message
        #: may hold, and the instant before which it is not sent again.
        self._fails: dict[str, int] = {}
        self._limit: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._next_id = 1

    # -- the wanted streams ------------------------------------------------------------

    def set_streams(self, streams: Iterable[str]) -> tuple[list[str], list[str]]:
        """Want exactly ``streams`` from now on; ``(added, removed)``, each in order."""
        wanted = dict.fromkeys(streams)
        removed = [s for s in self._shard_of if s not in wanted]
        for s in removed:
            del self._shards[self._shard_of.pop(s)][s]
            self._forget_failure(s)
        added = [s for s in wanted if s not in self._shard_of]
        cap = self.streams_per_connection
        room = iter(sorted(self._shards))
        shard: int | None = next(room, None)
        for s in added:
            while shard is not None and len(self._shards[shard]) >= cap:
                shard = next(room, None)
            if shard is None:
                shard = self._next_shard
                self._next_shard += 1
                self._shards[shard] = {}
            self._shards[shard][s] = None
            self._shard_of[s] = shard
        for sid in [k for k, v in self._shards.items() if not v and k != 0]:
            del self._shards[sid]
        return added, removed

    def shards(self) -> tuple[int, ...]:
        """The shards that need a connection, in order."""
        return tuple(sorted(self._shards))

    def shard_streams(self, shard: int) -> tuple[str, ...]:
        """The streams ``shard`` should carry (empty for a shard that is gone)."""
        return tuple(self._shards.get(shard, ()))

    def shard_of(self, stream: str) -> int | None:
        """The shard of a wanted stream (``None`` if it is not wanted)."""
        return self._shard_of.get(stream)

    def url_streams(self, shard: int) -> list[str]:
        """The first streams of ``shard`` whose ``/``-joined names fit ``url_chars``: what a
        new connection names in its URL (the rest it subscribes)."""
        out: list[str] = []
        used = 0
        for s in self._shards.get(shard, ()):
            used += len(s) + (1 if out else 0)
            if used > self.url_chars:
                break
            out.append(s)
        return out

    # -- connections -------------------------------------------------------------------

    def opened(self, conn: int, *, shard: int, url_streams: Sequence[str], now: float) -> None:
        """Connection ``conn`` is open for ``shard``, carrying the streams its URL named."""
        self._conns[conn] = _Conn(
            shard=shard,
            sends=SlidingWindow(self.send_limit, self.window),
            controls=SlidingWindow(self.control_limit, self.window),
            carried=set(url_streams),
        )

    def closed(self, conn: int) -> None:
        """Connection ``conn`` is gone; what it carried and awaited goes with it."""
        self._conns.pop(conn, None)

    def carried(self, conn: int) -> frozenset[str]:
        """The streams the exchange confirmed ``conn`` carries."""
        c = self._conns.get(conn)
        return frozenset(c.carried) if c is not None else frozenset()

    def ready(self, conn: int) -> bool:
        """``conn`` carries exactly what its shard wants and awaits no reply."""
        c = self._conns.get(conn)
        if c is None or c.pending:
            return False
        return c.carried == set(self._shards.get(c.shard, ()))

    def missing(self, conn: int) -> int:
        """Streams its shard wants that ``conn`` does not carry yet."""
        c = self._conns.get(conn)
        if c is None:
            return 0
        return sum(1 for s in self._shards.get(c.shard, ()) if s not in c.carried)

    def stats(self, conn: int, now: float) -> dict[str, int]:
        """``streams``, ``pending``, ``messages``, ``pongs``, ``errors`` and
        ``messages_last_s`` (what we sent in the last window) of ``conn``."""
        c = self._conns.get(conn)
        if c is None:
            return {}
        return {
            "streams": len(c.carried),
            "pending": len(c.pending),
            "messages": c.messages,
            "pongs": c.pongs,
            "errors": c.errors,
            "messages_last_s": c.sends.count(now),
        }

    # -- sending -----------------------------------------------------------------------

    def pong(self, conn: int, now: float) -> bool:
        """We answered a server ping on ``conn`` at ``now`` (it counts toward the rate);
        False if that took the window past the limit (the reserve was already used)."""
        c = self._conns.get(conn)
        if c is None:
            return True
        c.pongs += 1
        return c.sends.try_acquire(now)

    def next_request(self, conn: int, now: float) -> Request | None:
        """The next control message for ``conn`` at ``now``, counted as sent; or ``None``
        (nothing to do, a backoff, or the send window is full: see :meth:`next_due`)."""
        c = self._conns.get(conn)
        if c is None:
            return None
        method, streams = self._work(c, now)
        if not streams:
            return None
        if c.sends.wait_time(now) > 0 or c.controls.wait_time(now) > 0:
            return None
        c.sends.try_acquire(now)
        c.controls.try_acquire(now)
        c.messages += 1
        request = Request(conn, self._next_id, method, tuple(streams), now)
        self._next_id += 1
        c.pending[request.id] = request
        return request

    def next_due(self, conn: int, now: float) -> float | None:
        """When :meth:`next_request` may next give something for ``conn`` without new
        events (a backoff or the send window ending, a reply's deadline); ``None``: only
        an event (a reply, :meth:`set_streams`) can change that."""
        c = self._conns.get(conn)
        if c is None:
            return None
        times = [r.sent_at + self.reply_timeout for r in c.pending.values()]
        _, streams = self._work(c, now)
        if streams:
            times.append(now + max(c.sends.wait_time(now), c.controls.wait_time(now)))
        else:
            times.extend(self._retries_of(c, now))
        return max(now, min(times)) if times else None

    def _retries_of(self, c: _Conn, now: float) -> list[float]:
        """When streams of ``c`` held back by a failure's backoff may go again."""
        if not self._retry_at:
            return []
        want = self._shards.get(c.shard, {})
        return [
            at for s, at in self._retry_at.items() if at > now and ((s in want) != (s in c.carried))
        ]

    def _work(self, c: _Conn, now: float) -> tuple[str, list[str]]:
        """The method and streams of ``c``'s next message (empty list: nothing to send)."""
        want = self._shards.get(c.shard, {})
        in_flight: set[str] = set()
        subscribing = 0
        for r in c.pending.values():
            in_flight.update(r.streams)
            if r.method == "SUBSCRIBE":
                subscribing += len(r.streams)
        held = self._retry_at
        if held:
            in_flight.update(s for s, at in held.items() if at > now)
        gone = [s for s in c.carried if s not in want and s not in in_flight]
        if gone:
            return "UNSUBSCRIBE", self._batch(sorted(gone))
        room = MAX_STREAMS_PER_CONNECTION - len(c.carried) - subscribing
        if room <= 0:
            return "SUBSCRIBE", []
        new = [s for s in want if s not in c.carried and s not in in_flight]
        return "SUBSCRIBE", self._batch(new)[:room]

    def _batch(self, streams: list[str]) -> list[str]:
        """The first streams of ``streams`` that fit one message. Streams that failed
        before go together, fewer per message the more they failed."""
        if not streams:
            return []
        limits = self._limit
        limit = self.streams_per_message
        first = limits.get(streams[0])
        if first is not None:
            limit = first
            streams = [s for s in streams if limits.get(s) == first]
        out: list[str] = []
        size = _ENVELOPE_BYTES
        for s in streams:
            size += len(s) + 3  # quotes and comma
            if len(out) >= limit or (out and size > self.message_bytes):
                break
            out.append(s)
        return out

    # -- replies -----------------------------------------------------------------------

    def reply(self, conn: int, request_id: object, error: str | None, now: float) -> Outcome | None:
        """The exchange answered ``request_id`` on ``conn``: ``error`` is ``None`` for a
        ``result``, else its code and message. ``None`` for an id we no longer await (a
        late reply to a request that timed out is ignored: the retry decides)."""
        c = self._conns.get(conn)
        if c is None or type(request_id) is not int:
            return None
        request = c.pending.pop(request_id, None)
        if request is None:
            return None
        if error is not None:
            return self._failed(c, request, error, now)
        if request.method == "SUBSCRIBE":
            c.carried.update(request.streams)
        else:
            c.carried.difference_update(request.streams)
        for s in request.streams:
            self._forget_failure(s)
        return Outcome(request, ok=True)

    def expire(self, now: float) -> list[Outcome]:
        """Requests with no reply within ``reply_timeout``, failed now (to be retried)."""
        out: list[Outcome] = []
        for c in self._conns.values():
            late = [r for r in c.pending.values() if now >= r.sent_at + self.reply_timeout]
            for r in late:
                del c.pending[r.id]
                out.append(self._failed(c, r, f"no reply within {self.reply_timeout:g}s", now))
        return out

    def _failed(self, c: _Conn, request: Request, error: str, now: float) -> Outcome:
        c.errors += 1
        size = max(1, len(request.streams) // 2)
        retry_at = now
        for s in request.streams:
            fails = self._fails[s] = min(self._fails.get(s, 0) + 1, 32)
            self._limit[s] = min(self._limit.get(s, size), size)
            delay = min(self.retry_max, self.retry_initial * 2.0 ** (fails - 1))
            retry_at = self._retry_at[s] = now + delay
        return Outcome(request, ok=False, error=error, retry_at=retry_at)

    def _forget_failure(self, stream: str) -> None:
        self._fails.pop(stream, None)
        self._limit.pop(stream, None)
        self._retry_at.pop(stream, None)

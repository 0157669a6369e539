"""A lean, sans-I/O reader for one SSE response: HTTP/1.1 head, chunked body, event blocks.

The load tester reads up to 20,000 streams and a few hundred thousand events a second
on a shared core, so it cannot afford a general HTTP client object or the full
WHATWG decoder (:class:`pricectl.core.sse.SSEDecoder`, which decodes text and splits
every line) per connection. This reader works on bytes and does only what the
measurement needs:

* the response head: status code and the headers that matter
  (``Transfer-Encoding: chunked``, ``Content-Type``);
* the body, de-chunked when the server uses chunked transfer coding (aiohttp does);
* complete event blocks, split on the blank line that ends each event (lines ending
  in CRLF or CR are normalised to LF first);
* for each block, its ``event``, ``id``, ``retry`` and ``data`` fields
  (:func:`parse_block`), and from an update's ``data`` payload the four fields the
  measurement needs without parsing the JSON (:func:`price_fields`).

It is fed whatever ``data_received`` got, in any split::

    r = StreamReader()
    r.feed(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/event-stream\\r\\n\\r\\n: ok\\n\\n")
    # -> [b": ok"]   (r.status == 200)
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = [
    "BlockFields",
    "Event",
    "FrameMemo",
    "PriceFields",
    "ProtocolError",
    "StreamReader",
    "StreamState",
    "build_request",
    "fast_price",
    "parse_block",
    "price_fields",
]

_MAX_HEAD = 16 * 1024
_MAX_PENDING = 1024 * 1024


class ProtocolError(ValueError):
    """The server sent something that is not an HTTP/1.1 response we can read."""


class StreamState(Enum):
    """Where the reader is in the response."""

    HEAD = "head"
    BODY = "body"
    DONE = "done"


def build_request(host: str, port: int, target: str, last_event_id: str | None = None) -> bytes:
    """The GET request an EventSource sends (``Last-Event-ID`` when resuming)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        "User-Agent: pricectl-loadtest",
    ]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class StreamReader:
    """Feed response bytes, get complete SSE event blocks (bytes, without the blank line).

    After the head, :attr:`status` and :attr:`headers` (lower-case names) are set. A
    non-200 status leaves the reader in ``DONE``; the caller closes. The end of a
    chunked body (the zero-size chunk) also moves it to ``DONE``.
    """

    __slots__ = (
        "_chunk_left",
        "_chunked",
        "_cr",
        "_need_crlf",
        "_raw",
        "_sse",
        "headers",
        "state",
        "status",
    )

    def __init__(self) -> None:
        self.state = StreamState.HEAD
        self.status = 0
        self.headers: dict[str, str] = {}
        self._raw = b""
        self._sse = b""
        self._chunked = False
        self._chunk_left = 0
        self._need_crlf = False
        self._cr = False

    @property
    def event_stream(self) -> bool:
        """True when the response is a 200 ``text/event-stream``."""
        return self.status == 200 and self.headers.get("content-type", "").startswith(
            "text/event-stream"
        )

    @property
    def at_boundary(self) -> bool:
        """True between events: nothing buffered, so :func:`fast_price` may read the next one."""
        return (
            self.state is StreamState.BODY
            and not self._raw
            and not self._sse
            and not self._chunk_left
            and not self._need_crlf
            and not self._cr
        )

    @property
    def chunked(self) -> bool:
        """True when the body uses chunked transfer coding."""
        return self._chunked

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the event blocks it completed (comments included)."""
        if self.state is StreamState.BODY:
            body = self._dechunk(data) if self._chunked else data
        elif self.state is StreamState.HEAD:
            body = self._head(data)
        else:
            return []
        return self._blocks(body) if body else []

    def _head(self, data: bytes) -> bytes:
        raw = self._raw + data
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            if len(raw) > _MAX_HEAD:
                raise ProtocolError("response head larger than 16 KiB")
            self._raw = raw
            return b""
        self._raw = b""
        lines = raw[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                self.headers[name.strip().lower()] = value.strip()
        if self.status != 200:
            self.state = StreamState.DONE
            return b""
        self.state = StreamState.BODY
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        rest = raw[end + 4 :]
        if not rest:
            return b""
        return self._dechunk(rest) if self._chunked else rest

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._raw + data if self._raw else data
        n = len(buf)
        left = self._chunk_left
        # Fast path: the whole of ``buf`` is data of the current chunk.
        if left >= n and not self._need_crlf:
            self._chunk_left = left - n
            self._raw = b""
            if self._chunk_left == 0:
                self._need_crlf = True
            return buf
        out: list[bytes] = []
        pos = 0
        while True:
            if left:
                take = min(left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                left -= take
                if left:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self._need_crlf = False
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 1024:
                    raise ProtocolError("chunk size line too long")
                break
            size_text = buf[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            pos = eol + 2
            if size == 0:
                self.state = StreamState.DONE
                pos = n
                break
            left = size
        self._chunk_left = left
        self._raw = buf[pos:]
        return b"".join(out)

    def _blocks(self, body: bytes) -> list[bytes]:
        if b"\r" in body or self._cr:
            body = self._normalise(body)
        buf = self._sse + body if self._sse else body
        if b"\n\n" not in buf:
            if len(buf) > _MAX_PENDING:
                raise ProtocolError("an event larger than 1 MiB")
            self._sse = buf
            return []
        blocks = buf.split(b"\n\n")
        rest = blocks.pop()
        if buf[0] == 10 or b"\n\n\n" in buf:  # runs of blank lines: empty events
            blocks = [b.strip(b"\n") for b in blocks if b.strip(b"\n")]
        self._sse = rest.lstrip(b"\n") if rest[:1] == b"\n" else rest
        return blocks

    def _normalise(self, body: bytes) -> bytes:
        if self._cr:
            self._cr = False
            if body.startswith(b"\n"):
                body = body[1:]
        if body.endswith(b"\r"):
            self._cr = True
        return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


BlockFields = tuple[bytes, bytes | None, int | None, bytes | None]
"""``(event, id, retry, data)`` of one block; ``event`` defaults to ``b"message"``."""


def parse_block(block: bytes) -> BlockFields:
    """The fields of one event block. A comment-only block has ``data`` ``None``.

    Multiple ``data`` lines are joined with LF, as EventSource does.
    """
    lines = block.split(b"\n")
    if (  # the server's own shape: id, event, one data line
        len(lines) == 3
        and lines[0][:4] == b"id: "
        and lines[1][:7] == b"event: "
        and lines[2][:6] == b"data: "
    ):
        return lines[1][7:], lines[0][4:], None, lines[2][6:]
    event = b"message"
    ident: bytes | None = None
    retry: int | None = None
    data: bytes | None = None
    for line in lines:
        if not line or line[0] == 58:  # b":" comment
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data = value if data is None else data + b"\n" + value
        elif name == b"event":
            event = value
        elif name == b"id":
            if b"\0" not in value:
                ident = value
        elif name == b"retry" and value.isdigit():
            retry = int(value)
    return event, ident, retry, data


PriceFields = tuple[str, int, int, int]
"""``(pair, ingest_ns, epoch, seq)`` of an update payload (docs/protocol.md,
"The update object")."""


def _int_after(data: bytes, key: bytes, start: int) -> tuple[int, int]:
    """The whole number after ``key`` at or after ``start``, and where it ends."""
    i = data.find(key, start)
    if i < 0:
        i = data.find(key)  # keys in another order than 3.2's
        if i < 0:
            raise ValueError(f"no {key[1:-2].decode()} field")
    i += len(key)
    j = data.find(b",", i)
    if j < 0:
        j = data.find(b"}", i)
    try:
        return int(data[i:j]), j
    except ValueError:
        raise ValueError(f"{key[1:-2].decode()} is not a whole number") from None


def price_fields(data: bytes) -> PriceFields:
    """Read ``pair``, ``ingest_ns``, ``epoch`` and ``seq`` from compact 3.2 JSON.

    Cheaper than ``json.loads`` by an order of magnitude; raises ``ValueError`` when a
    field is missing, so a malformed payload is counted as an error, not mis-measured.
    """
    i = data.find(b'"pair":"')
    if i < 0:
        raise ValueError("no pair field (or not a string)")
    j = data.find(b'"', i + 8)
    pair = data[i + 8 : j].decode()
    m = _NUMBERS.search(data, j)
    if m is not None:  # 3.2's key order: one search for all three
        return pair, int(m[1]), int(m[2]), int(m[3])
    ingest_ns, end = _int_after(data, b'"ingest_ns":', j)
    epoch, end = _int_after(data, b'"epoch":', end)
    seq, _ = _int_after(data, b'"seq":', end)
    return pair, ingest_ns, epoch, seq


# One price event in one read, the overwhelmingly common case at scale: read with a few
# slice checks and one regular expression instead of de-chunking, splitting into blocks
# and searching field by field.
_NUMBERS = re.compile(rb'"ingest_ns":(\d+),"epoch":(\d+),"seq":(\d+)[,}]')
_KINDS = {b"price": b"price", b"snapshot": b"snapshot"}

FastPrice = tuple[bytes, bytes, str, int, int, int]
"""``(event, id, pair, ingest_ns, epoch, seq)``."""


def fast_price(data: bytes, chunked: bool) -> FastPrice | None:
    """Read ``data`` if it is exactly one whole ``id``/``event``/``data`` event (one chunk).

    Only valid when the reader is :attr:`StreamReader.at_boundary`; returns ``None`` for
    anything else (the caller then feeds the reader as usual), so it never changes what
    is measured, only how fast.
    """
    if chunked:
        i = data.find(b"\r\n")
        if i <= 0 or i > 8 or data[-4:] != b"\n\n\r\n":
            return None
        try:
            if int(data[:i], 16) != len(data) - i - 4:
                return None
        except ValueError:
            return None
        body = data[i + 2 : -2]
    else:
        body = data
    if body[:4] != b"id: " or body.find(b"\n\n") != len(body) - 2:
        return None
    j = body.find(b"\n")
    if body[j + 1 : j + 8] != b"event: ":
        return None
    k = body.find(b"\n", j + 8)
    kind = _KINDS.get(body[j + 8 : k])
    if kind is None or body[k + 1 : k + 16] != b'data: {"pair":"':
        return None
    q = body.find(b'"', k + 16)
    m = _NUMBERS.search(body, q)
    if m is None or b"\n" in body[k + 1 : -2]:
        return None
    return kind, body[4:j], body[k + 16 : q].decode(), int(m[1]), int(m[2]), int(m[3])


Event = tuple[bool, str, str, int, int, int]
"""``(snapshot, id, pair, ingest_ns, epoch, seq)`` of one whole price or snapshot event."""


class FrameMemo:
    """:func:`fast_price` remembered by the frame's bytes, for every client of a loader.

    ``serve`` serialises an update once and writes the same bytes to every subscriber
    (docs/architecture.md, "The pipeline"), so one loader process receives each frame
    thousands of times. The first client to get it parses it; every other one finds it here
    with one hash and one comparison of the bytes. The answer is a pure function of the
    bytes, so what is measured does not change, only what it costs. Two tables, because the
    same bytes mean different things with and without chunked transfer coding.

    Only the newest ``limit`` frames are kept (the oldest goes first), so a memo stays
    small whatever the run's length: at 10 updates/s a frame stays for ``limit``/10 s,
    far longer than any client lags behind while its reads still hold whole events.
    """

    __slots__ = ("chunked", "limit", "plain")

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        #: ``bytes -> Event`` for chunked bodies and for plain ones; look up directly
        #: (``memo.chunked.get(data)``), call :meth:`parse` on a miss.
        self.chunked: dict[bytes, Event] = {}
        self.plain: dict[bytes, Event] = {}

    def parse(self, data: bytes, chunked: bool) -> Event | None:
        """Read ``data`` with :func:`fast_price` and remember the answer when it is one."""
        got = fast_price(data, chunked)
        if got is None:
            return None
        table = self.chunked if chunked else self.plain
        if len(table) >= self.limit:
            del table[next(iter(table))]
        event = (got[0] == b"snapshot", got[1].decode(), got[2], got[3], got[4], got[5])
        table[data] = event
        return event

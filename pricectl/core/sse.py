"""Server-Sent Events on the wire: encoding and an incremental decoder (WHATWG HTML, 9.2).

The server builds every event's bytes once and writes them to many sockets, so
encoding is a pure function of its fields. The decoder is what ``pricectl tail``
and ``pricectl loadtest`` read a stream with: feed it bytes as they arrive in any
split, get complete events back. It follows the "event stream interpretation"
rules of https://html.spec.whatwg.org/multipage/server-sent-events.html:

* the stream is UTF-8; one leading BOM is dropped;
* lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the
  start of the next are one line end);
* a line starting with ``:`` is a comment;
* ``field: value`` (one space after the colon is dropped), a line without a colon
  is a field with an empty value;
* ``data`` lines accumulate joined by LF; an empty line dispatches the event, or
  just resets the buffers when no data was given;
* ``id`` sets the last event id (ignored when it contains NUL) and persists
  across events; ``retry`` is honoured only when it is all ASCII digits.

Example::

    >>> d = SSEDecoder()
    >>> d.feed(b"id: 7-1\\nevent: price\\ndata: {}\\n")
    []
    >>> d.feed(b"\\n")
    [SSEEvent(event='price', data='{}', id='7-1', retry=None)]
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent", "encode_comment", "encode_event"]

_NEWLINES = re.compile(r"\r\n|\r|\n")


def _check_field(name: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must not contain a line break: {value!r}")
    if name == "id" and "\0" in value:
        raise ValueError("SSE id must not contain NUL (clients would ignore it)")


def encode_event(
    data: str,
    event: str | None = None,
    id: str | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """One event as bytes: ``retry:``, ``id:``, ``event:``, one ``data:`` line per line of data.

    Raises ``ValueError`` for an id or event name with a line break, since it
    would silently split into other fields on the client.
    """
    parts: list[str] = []
    if retry_ms is not None:
        if retry_ms < 0:
            raise ValueError("SSE retry must be >= 0")
        parts.append(f"retry: {int(retry_ms)}\n")
    if id is not None:
        _check_field("id", id)
        parts.append(f"id: {id}\n")
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    for line in _NEWLINES.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment block (``: text``) followed by a blank line; clients ignore it.

    Used for the opening byte that makes proxies start the stream and for the
    ``: ping`` heartbeat that keeps idle connections from being reaped.
    """
    lines = _NEWLINES.split(text)
    return ("".join(f": {line}\n" if line else ":\n" for line in lines) + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """A dispatched event. ``id`` is the last event id in effect; ``retry`` the last valid retry."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream parser: :meth:`feed` bytes, get the events completed so far.

    State kept between calls: the partial line, the event being built, the last
    event id, the reconnection time, and whether a CR ended the previous chunk.
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_event",
        "_has_data",
        "_partial",
        "_skip_lf",
        "_started",
        "comments",
        "last_comment",
        "last_event_id",
        "retry",
    )

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        #: The last event id received (persists across events, as in EventSource).
        self.last_event_id: str | None = None
        #: The reconnection time in ms from the last valid ``retry:`` field.
        self.retry: int | None = None
        #: How many comment lines were seen (heartbeats show liveness).
        self.comments = 0
        self.last_comment: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` (any split of the stream); return the events it completed."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        if text[-1] == "\r":
            # The line is complete now; an LF opening the next chunk belongs to it.
            self._skip_lf = True
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        out: list[SSEEvent] = []
        for line in lines:
            if not line:
                self._dispatch(out)
            else:
                self._line(line)
        return out

    def _line(self, line: str) -> None:
        if line[0] == ":":
            self.comments += 1
            self.last_comment = line[1:].removeprefix(" ")
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._has_data:
            out.append(
                SSEEvent(
                    event=self._event or "message",
                    data="\n".join(self._data),
                    id=self.last_event_id,
                    retry=self.retry,
                )
            )
        self._data = []
        self._has_data = False
        self._event = ""

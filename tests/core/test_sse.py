"""SSE encoding and the incremental WHATWG decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.sse import SSEDecoder, SSEEvent, encode_comment, encode_event


def feed_all(chunks: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(d.feed(c))
    return out


def test_encode_event_field_order():
    """An event is retry, id, event, then one data line per line, then a blank line."""
    assert encode_event('{"a":1}', event="price", id="7-1", retry_ms=3500) == (
        b'retry: 3500\nid: 7-1\nevent: price\ndata: {"a":1}\n\n'
    )


def test_encode_event_multiline_data():
    """Each line of data (any line ending) becomes its own data: line."""
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_event_rejects_line_break_in_id():
    """An id with a line break would inject fields on the client, so it is refused."""
    with pytest.raises(ValueError):
        encode_event("x", id="1\n2")
    with pytest.raises(ValueError):
        encode_event("x", event="a\rb")


def test_encode_comment():
    """A comment is one ': ' line per line of text and a blank line."""
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("") == b":\n\n"


def test_decoder_basic_event():
    """id, event and data fields make one event at the blank line."""
    assert feed_all([b"id: 7-1\nevent: price\ndata: {}\n\n"]) == [
        SSEEvent("price", "{}", "7-1", None)
    ]


def test_decoder_all_line_endings():
    """CRLF, CR and LF all end lines, including CR and LF split over chunks."""
    events = feed_all([b"data: a\r", b"\ndata: b\r\r", b"data: c\n", b"\n"])
    assert [e.data for e in events] == ["a\nb", "c"]


def test_decoder_multiline_data_and_default_type():
    """Several data lines join with LF; the default event type is message."""
    assert feed_all([b"data: one\ndata:two\ndata\n\n"]) == [SSEEvent("message", "one\ntwo\n")]


def test_decoder_drops_one_leading_bom_only():
    """A BOM at the start of the stream is dropped, split across chunks or not."""
    bom = "\ufeff".encode()
    events = feed_all([bom[:1], bom[1:] + b"data: x\n\n"])
    assert events == [SSEEvent("message", "x")]
    # A second BOM is part of the field name, so the line is an unknown field.
    assert feed_all([bom + bom + b"data: x\n\n"]) == []


def test_decoder_comments_counted_not_dispatched():
    """Comment lines are not events, but the decoder counts them for liveness."""
    d = SSEDecoder()
    assert d.feed(b": ping\n\n:hello\n\n") == []
    assert d.comments == 2
    assert d.last_comment == "hello"


def test_decoder_id_persists_and_retry():
    """The last event id persists across events; retry needs ASCII digits only."""
    d = SSEDecoder()
    events = d.feed(
        b"retry: 1500\nid: 1-1\ndata: a\n\ndata: b\n\nretry: x1\nid: 1\x002\ndata: c\n\n"
    )
    assert [(e.data, e.id, e.retry) for e in events] == [
        ("a", "1-1", 1500),
        ("b", "1-1", 1500),
        ("c", "1-1", 1500),
    ]
    assert d.last_event_id == "1-1"


def test_decoder_empty_data_buffer_does_not_dispatch():
    """A blank line with no data only resets the event type."""
    assert feed_all([b"event: snapshot\n\ndata: x\n\n"]) == [SSEEvent("message", "x")]


def test_decoder_utf8_split_inside_character():
    """A multi-byte character split over two chunks decodes intact."""
    raw = "data: 43 250 €\n\n".encode()
    i = raw.index(b"\xe2") + 1
    assert feed_all([raw[:i], raw[i:]]) == [SSEEvent("message", "43 250 €")]


def test_decoder_no_space_and_colon_in_value():
    """Only one space after the colon is dropped; later colons belong to the value."""
    assert feed_all([b"data:  a:b\n\n"]) == [SSEEvent("message", " a:b")]


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
            max_size=20,
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["price", "snapshot", None]),
    st.data(),
)
def test_roundtrip_any_split(lines, event, data):
    """Whatever the data and however the bytes are split, decoding inverts encoding."""
    text = "\n".join(lines)
    raw = encode_event(text, event=event, id="3-9") * 2
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    expected = SSEEvent(event or "message", text, "3-9")
    assert feed_all(chunks) == [expected, expected]

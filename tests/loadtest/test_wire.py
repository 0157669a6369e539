"""The load tester's byte-level SSE response reader (pure: head, chunked body, blocks)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricectl.core.sse import encode_comment, encode_event
from pricectl.core.ticks import PriceUpdate
from pricectl.loadtest.wire import (
    FrameMemo,
    ProtocolError,
    StreamReader,
    StreamState,
    build_request,
    fast_price,
    parse_block,
    price_fields,
)

HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n"
)
HEAD_PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def _update(seq: int) -> PriceUpdate:
    return PriceUpdate(
        pair="BTC/USD",
        symbol="BTCUSDT",
        price="43250.12",
        ingest_ns=1_700_000_000_125_000_000 + seq,
        epoch=7,
        seq=seq,
        gseq=seq * 3,
    )


def _events(n: int) -> list[bytes]:
    out = [encode_comment("ok"), b"retry: 3120\n\n"]
    out.append(encode_event(_update(1).to_json(), event="snapshot", id="7-3"))
    for seq in range(2, n + 2):
        out.append(encode_event(_update(seq).to_json(), event="price", id=f"7-{seq * 3}"))
    return out


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _read_all(reader: StreamReader, wire: bytes, cuts: list[int]) -> list[bytes]:
    blocks: list[bytes] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        blocks.extend(reader.feed(wire[last:cut]))
        last = cut
    return blocks


def test_request_carries_last_event_id_when_resuming() -> None:
    """The GET asks for an event stream and sends Last-Event-ID only when given."""
    fresh = build_request("127.0.0.1", 8000, "/api/market-data/stream?pairs=BTC/USD")
    assert fresh.startswith(b"GET /api/market-data/stream?pairs=BTC/USD HTTP/1.1\r\n")
    assert b"Accept: text/event-stream\r\n" in fresh and fresh.endswith(b"\r\n\r\n")
    assert b"Last-Event-ID" not in fresh
    assert b"Last-Event-ID: 7-12\r\n" in build_request("h", 1, "/s", "7-12")


@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_chunked_stream_in_any_split_gives_every_block(cuts: list[int]) -> None:
    """A chunked response cut at arbitrary points yields the same blocks, in order."""
    events = _events(5)
    wire = HEAD_CHUNKED + b"".join(_chunk(e) for e in events) + b"0\r\n\r\n"
    reader = StreamReader()
    blocks = _read_all(reader, wire, [c for c in cuts if c < len(wire)])
    assert reader.status == 200 and reader.event_stream
    assert blocks == [e[:-2] for e in events]
    assert reader.state is StreamState.DONE


@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_plain_stream_with_crlf_in_any_split(cuts: list[int]) -> None:
    """A non-chunked stream using CRLF line ends is normalised and split the same way."""
    events = _events(4)
    wire = HEAD_PLAIN + b"".join(e.replace(b"\n", b"\r\n") for e in events)
    blocks = _read_all(StreamReader(), wire, [c for c in cuts if c < len(wire)])
    assert blocks == [e[:-2] for e in events]


def test_block_fields_and_price_fields() -> None:
    """parse_block reads event/id/retry/data; price_fields reads the 3.2 numbers."""
    reader = StreamReader()
    blocks = reader.feed(HEAD_PLAIN + b"".join(_events(1)))
    comment, retry, snapshot, price = (parse_block(b) for b in blocks)
    assert comment[3] is None
    assert retry[2] == 3120
    assert snapshot[0] == b"snapshot" and snapshot[1] == b"7-3"
    event, ident, _, data = price
    assert event == b"price" and ident == b"7-6"
    assert data is not None
    assert price_fields(data) == ("BTC/USD", 1_700_000_000_125_000_002, 7, 2)


def test_price_fields_rejects_missing_numbers() -> None:
    """A payload without ingest_ns is an error, never a silently wrong latency."""
    with pytest.raises(ValueError, match="ingest_ns"):
        price_fields(b'{"pair":"BTC/USD","epoch":1,"seq":2}')


def test_multiline_data_and_blank_runs() -> None:
    """data lines join with LF; runs of blank lines produce no empty blocks."""
    reader = StreamReader()
    blocks = reader.feed(HEAD_PLAIN + b"\n\ndata: a\ndata: b\n\n\n\ndata: c\n\n")
    assert [parse_block(b)[3] for b in blocks] == [b"a\nb", b"c"]


def test_non_200_status_stops_the_reader() -> None:
    """A 503 is read as a status with headers (Retry-After) and no body blocks."""
    reader = StreamReader()
    assert reader.feed(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n{}") == []
    assert reader.status == 503 and reader.headers["retry-after"] == "7"
    assert reader.state is StreamState.DONE and not reader.event_stream


def test_garbage_is_a_protocol_error() -> None:
    """Something that is not HTTP, or a bad chunk size, raises ProtocolError."""
    with pytest.raises(ProtocolError):
        StreamReader().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    reader = StreamReader()
    with pytest.raises(ProtocolError, match="chunk size"):
        reader.feed(HEAD_CHUNKED + b"zz\r\n")


def test_fast_path_agrees_with_the_general_reader() -> None:
    """fast_price reads one whole event exactly as feed+parse_block+price_fields do."""
    event = encode_event(_update(9).to_json(), event="price", id="7-27")
    for chunked, wire in ((True, _chunk(event)), (False, event)):
        got = fast_price(wire, chunked)
        assert got == (b"price", b"7-27", "BTC/USD", 1_700_000_000_125_000_009, 7, 9)
        reader = StreamReader()
        reader.feed(HEAD_CHUNKED if chunked else HEAD_PLAIN)
        assert reader.at_boundary and reader.chunked == chunked
        (block,) = reader.feed(wire)
        kind, ident, _, data = parse_block(block)
        assert data is not None
        assert (kind, ident, *price_fields(data)) == got


@pytest.mark.parametrize(
    "wire",
    [
        _chunk(encode_event("{}", event="price", id="1-1")),  # not a price payload
        _chunk(encode_comment("ping")),  # a heartbeat
        _chunk(encode_event(_update(1).to_json(), event="price", id="7-3"))[:-5],  # cut short
        _chunk(encode_event(_update(1).to_json(), event="price", id="7-3")) * 2,  # two events
    ],
)
def test_fast_path_declines_anything_else(wire: bytes) -> None:
    """fast_price returns None for anything but one whole event, leaving it to the reader."""
    assert fast_price(wire, True) is None


def test_frame_memo_answers_what_fast_price_reads() -> None:
    """FrameMemo.parse gives fast_price's reading (id decoded) and remembers it by bytes."""
    memo = FrameMemo()
    event = encode_event(_update(9).to_json(), event="price", id="7-27")
    wire = _chunk(event)
    got = memo.parse(wire, chunked=True)
    assert got == (False, "7-27", "BTC/USD", 1_700_000_000_125_000_009, 7, 9)
    assert memo.chunked[bytes(bytearray(wire))] is got  # another client's copy of the bytes
    assert memo.plain == {}  # the same bytes mean something else without chunked coding
    assert memo.parse(event, chunked=False) == got
    snap = encode_event(_update(1).to_json(), event="snapshot", id="7-3")
    assert memo.parse(snap, chunked=False) == (True, "7-3", "BTC/USD", *_numbers(1))
    assert memo.parse(_chunk(encode_comment("ping")), chunked=True) is None
    assert len(memo.chunked) == 1


def _numbers(seq: int) -> tuple[int, int, int]:
    return 1_700_000_000_125_000_000 + seq, 7, seq


def test_frame_memo_keeps_only_the_newest_frames() -> None:
    """Past its limit the memo forgets the oldest frame first."""
    memo = FrameMemo(limit=3)
    frames = [
        _chunk(encode_event(_update(s).to_json(), event="price", id=f"7-{s}")) for s in range(5)
    ]
    for f in frames:
        memo.parse(f, chunked=True)
    assert list(memo.chunked) == frames[2:]

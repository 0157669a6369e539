"""serve's SSE response as bytes on the wire, built with the product's own encoder."""

from __future__ import annotations

from pricectl.core.sse import encode_event
from pricectl.core.ticks import PriceUpdate

__all__ = ["EPOCH", "HEAD", "chunk", "frame"]

#: The head serve sends: an event stream in chunked transfer coding (aiohttp's).
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n"
)
EPOCH = 7


def chunk(payload: bytes) -> bytes:
    """``payload`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def frame(
    seq: int, ingest_ns: int, kind: str = "price", pair: str = "BTC/USD", epoch: int = EPOCH
) -> bytes:
    """One event as serve writes it: one chunk holding ``id``, ``event`` and ``data``."""
    update = PriceUpdate(
        pair=pair,
        symbol=pair.replace("/", "") + "T",
        price="43250.12",
        ingest_ns=ingest_ns,
        epoch=epoch,
        seq=seq,
        gseq=seq,
    )
    return chunk(encode_event(update.to_json(), event=kind, id=f"{epoch}-{seq}"))

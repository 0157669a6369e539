"""The kernel's side of a stream: a bounded send buffer, and a reset when serve drops it.

A client that never reads is a cost in two places. serve's own (the transport's buffer
up to ``server.high_water``, then one conflation slot per pair) is bounded by the
fan-out. The kernel's is not, by default: Linux grows a socket's send buffer by itself
(autotuning, up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB by default), so 300 clients
that never read pinned over a gigabyte of host TCP memory before conflation even
started. :func:`bound_send_buffer` sets ``SO_SNDBUF`` on each stream socket
(``server.send_buffer``; Linux doubles the value for its bookkeeping and turns
autotuning off for that socket, see socket(7)), so a stalled client holds at most that
much in the kernel, and what does not fit waits in serve's buffer, where the fan-out's
high-water mark sees it and conflation starts at once.

When serve gives up on a client (it stayed unwritable past ``server.write_timeout``),
an ordinary close would leave the socket to the kernel with its unsent bytes, to be
retried for as long as the peer keeps its window shut: the memory stays pinned.
:func:`reset` closes with ``SO_LINGER`` set to zero, which sends a TCP RST and frees the
socket and its buffers at once (RFC 9293 section 3.6 calls this an abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["bound_send_buffer", "reset", "send_buffer_size"]

#: ``struct linger`` with l_onoff=1, l_linger=0: close() sends RST and discards the buffers.
_LINGER_ABORT = struct.pack("ii", 1, 0)


def send_buffer_size(configured: int, high_water: int) -> int:
    """The ``SO_SNDBUF`` for stream sockets: ``server.send_buffer``, or when that is 0,
    ``server.high_water`` (the kernel then holds about as much as serve's own buffer
    does before conflation starts; it doubles the value for its own bookkeeping)."""
    return configured if configured > 0 else high_water


def bound_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    """Set ``SO_SNDBUF`` of the transport's socket to ``size`` bytes (when it has one)."""
    sock = transport.get_extra_info("socket")
    if sock is None or size <= 0:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort the connection with a TCP RST, so the kernel frees its buffers at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()

"""Where serve's HTTP API lives: the paths that serve and its clients agree on.

These are part of the wire contract (docs/protocol.md): the server routes them and
the clients build their URLs from them, so both import the one definition here.
"""

from __future__ import annotations

__all__ = ["PAIRS_PATH", "PRICES_PATH", "STREAM_PATH"]

#: The SSE price stream (``GET``, ``?pairs=BTC/USD,ETH/USD``).
STREAM_PATH = "/api/market-data/stream"

#: The REST snapshot (``GET``, ``?pairs=``): the browser's fallback, and ``tail --once``.
PRICES_PATH = "/api/market-data/prices"

#: What can be asked for and what is on (``GET``, ``?q=`` searches).
PAIRS_PATH = "/api/market-data/pairs"

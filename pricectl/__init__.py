"""pricectl: one Binance WebSocket for a whole cluster, live prices to every browser."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

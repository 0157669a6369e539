"""The application's keys: what every handler finds on ``request.app``.

They live apart from ``app.py`` so the handlers in other modules (``stream.py``)
can read them without importing the application that routes to them.
"""

from __future__ import annotations

from aiohttp import web

from pricectl.bus.base import Bus
from pricectl.config import Settings
from pricectl.server.hub import Hub

__all__ = ["BUS", "HUB", "SETTINGS", "UPSTREAM"]

HUB = web.AppKey("hub", Hub)
SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", Bus)
#: The relay's status for /health (a ``health.UpstreamStatus``), or None.
UPSTREAM = web.AppKey("upstream", object)

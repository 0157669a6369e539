"""``pricectl serve``: the SSE fan-out server (hub, stream endpoint, health, metrics, dashboard).

Create the application in-process with :func:`pricectl.server.app.create_app` and
serve it with :func:`pricectl.server.app.start_server`.
"""

from __future__ import annotations

__all__: list[str] = []

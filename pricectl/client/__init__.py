"""Reading the price stream the way a careful browser does (docs/architecture.md, "Layout").

- :class:`~pricectl.client.sse.SSEClient`: the SSE stream with ``retry:``, backoff,
  ``Last-Event-ID`` and per-pair gap/duplicate detection; used by ``tail`` and ``loadtest``.
- :mod:`pricectl.client.events`: what every reader yields (``Price``, ``Connected``,
  ``Disconnected``, ``Notice``).
- :mod:`pricectl.client.sources`: the same events from the bus or the exchange.
- :mod:`pricectl.client.views`, :mod:`pricectl.client.tail`, :mod:`pricectl.client.health`:
  the ``tail`` and ``health`` commands' logic.

Importing this package imports no network library; the submodules do.
"""

from __future__ import annotations

__all__: list[str] = []

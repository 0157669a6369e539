"""The bus between ingest and serve (docs/architecture.md, "The bus"): one interface, two
backends.

``memory://`` runs in-process (the embedded default: ``serve`` runs the relay
itself). ``redis://``, ``rediss://`` and ``unix://`` use Redis, ``redis+sentinel://``
a Sentinel service and ``redis+cluster://`` a Redis Cluster: per-pair channel
``<prefix>prices:<PAIR>``, latest snapshot in hash ``<prefix>prices:latest``, and
a publish that Redis itself refuses unless the caller holds the lease.

Use :func:`open_bus` to get a :class:`~pricectl.bus.base.Bus` for a URL; the
backend module is imported only then.
"""

from __future__ import annotations

from pricectl.bus.base import Bus, BusEvent, Fence, Gap, Update

__all__ = ["Bus", "BusEvent", "Fence", "Gap", "Update", "open_bus"]


def open_bus(url: str, prefix: str = "") -> Bus:
    """A bus for ``url`` (not yet connected: call ``await bus.start()``)."""
    if url.startswith("memory://"):
        from pricectl.bus.memory import MemoryBus

        return MemoryBus(prefix=prefix)
    from pricectl.bus.redis import RedisBus

    return RedisBus(url, prefix=prefix)

"""Ingest, the stage that holds the exchange connections (docs/architecture.md,
"The lease").

- :mod:`pricectl.ingest.relay`: the per-pair source cascade (WebSocket, REST, cache),
  stamping and the fenced publish into the bus.
- :mod:`pricectl.ingest.candidate`: ``pricectl ingest``, the leadership loop that runs
  the relay only while this process holds the lease.
"""

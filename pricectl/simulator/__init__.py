"""``pricectl simulate``: a local exchange that speaks Binance's public market-data protocol.

Use :class:`pricectl.simulator.server.Simulator` (``await sim.start()``, ``sim.ws_url``,
``sim.rest_url``) in tests and benchmarks; ``pricectl simulate`` runs one as a process.
"""

"""A local exchange that speaks Binance's public market-data protocol (``pricectl simulate``).

Use :class:`Simulator` (``await sim.start()``, ``sim.ws_url``, ``sim.rest_url``,
``await sim.stop()``) in tests and benchmarks; ``pricectl simulate`` runs one as a process::

    from pricectl.simulator import Simulator, SimulatorConfig

    sim = Simulator(SimulatorConfig(trade_rate=50))
    await sim.start()

The names are loaded on first use, so importing this package (or only its pure
:mod:`~pricectl.simulator.market`) loads no web server and starts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pricectl.simulator.server import Faults, Simulator, SimulatorConfig, symbols_for_pairs

__all__ = ["Faults", "Simulator", "SimulatorConfig", "symbols_for_pairs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pricectl.simulator import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The real recordings under ``tests/data/binance/real/`` and what is known about them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REAL", "RECORDING_PAIRS"]

#: Frames recorded from the live exchange by third parties (see tests/data/binance/README.md).
REAL = Path(__file__).parent / "data" / "binance" / "real"


def _pairs(name: str) -> tuple[str, ...]:
    text = (REAL / name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


#: The display pairs of the 10 symbols in the 2021-04-05 recording.
RECORDING_PAIRS = _pairs("cryptofeed-binance-spot-2021-04-05.pairs.txt")

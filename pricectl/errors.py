"""One exception tree for pricectl.

::

    PricectlError                 anything pricectl raises on purpose
     ├── UsageError               bad command-line input            (exit 2)
     ├── ConfigError              bad configuration                 (exit 2)
     │    └── UnknownPairError    a pair not in the configured set   (exit 2)
     ├── FeedError                the exchange misbehaved            (exit 1)
     │    └── RateLimitedError    REST 429/418 with its Retry-After  (exit 1)
     ├── BusError                 the bus (Redis) failed             (exit 1)
     │    └── FencedError         a publish refused: the lease is gone (exit 1)
     └── LeaseLost                leadership lost                    (exit 1)

Only ``pricectl.cli`` maps these to exit codes (:func:`exit_code_for`).
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "ConfigError",
    "FeedError",
    "FencedError",
    "LeaseLost",
    "PricectlError",
    "RateLimitedError",
    "UnknownPairError",
    "UsageError",
    "exit_code_for",
]


class PricectlError(Exception):
    """Base of every error pricectl raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(PricectlError):
    """Bad input on the command line."""

    exit_code = 2


class ConfigError(PricectlError):
    """Bad configuration. ``problems`` holds one line per problem found."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class UnknownPairError(ConfigError):
    """A pair that is malformed or not among the configured pairs."""


class FeedError(PricectlError):
    """The exchange (WebSocket or REST) failed or sent something unusable."""


class RateLimitedError(FeedError):
    """The exchange answered 429 or 418; ``retry_after`` is in seconds."""

    def __init__(self, message: str, status: int, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BusError(PricectlError):
    """The bus (Redis) could not be reached or refused an operation."""


class FencedError(BusError):
    """A publish was refused because the caller no longer holds the lease."""


class LeaseLost(PricectlError):
    """Leadership was lost (renewal failed past the deadline, or fenced)."""


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error: 2 usage/config, 1 anything else."""
    if isinstance(exc, PricectlError):
        return exc.exit_code
    return 1

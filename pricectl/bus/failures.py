"""What a Redis error means, for every Redis user (bus, lease, health): one classifier.

redis-py's exception tree does not say what an operator needs to know. Its
``AuthenticationError`` (``NOAUTH``, ``WRONGPASS``) and ``BusyLoadingError`` (``LOADING``)
are subclasses of ``ConnectionError``, so a test of "is it a connection error" calls a
wrong password "unreachable"; ``READONLY`` (we are talking to a replica) and ``MOVED``
(a cluster slot lives elsewhere) are plain ``ResponseError`` subclasses. Each needs a
different remedy, so each gets its own :class:`Failure` kind and log wording:

==============  ==========================================  ==========================
kind            Redis said / what happened                  retry?
==============  ==========================================  ==========================
unreachable     connect refused, reset, EOF, timeout        yes, it may come back
loading         ``LOADING`` (restarting, reading its data)  yes, in a moment
readonly        ``READONLY`` (a replica, not the master)    yes, after a failover
redirect        ``MOVED`` / ``ASK`` (cluster slot moved)    yes, with a fresh slot map
auth            ``NOAUTH`` / ``WRONGPASS`` / ``NOPERM``     no: fix the credentials
error           anything else (a bad command, OOM, ...)     as the caller sees fit
==============  ==========================================  ==========================

Only ``unreachable`` errors may be retried at once on a fresh connection (see
:func:`retry_once`): the command never reached a live server, or the server that had it
is gone.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    ReadOnlyError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Failure", "classify", "describe", "is_unreachable", "retry_once"]

T = TypeVar("T")


class Failure(enum.Enum):
    """What kind of trouble a Redis error is (the table in the module docstring)."""

    UNREACHABLE = "unreachable"
    LOADING = "loading"
    READONLY = "readonly"
    REDIRECT = "redirect"
    AUTH = "auth"
    ERROR = "error"


#: How each kind reads in a log line: ``redis <wording> at <url>: <detail>``.
_WORDING = {
    Failure.UNREACHABLE: "unreachable",
    Failure.LOADING: "loading its data (not ready)",
    Failure.READONLY: "is a read-only replica (READONLY), not the master",
    Failure.REDIRECT: "redirected the command (cluster MOVED/ASK)",
    Failure.AUTH: "refused our credentials",
    Failure.ERROR: "error",
}


def classify(exc: BaseException) -> Failure:
    """The :class:`Failure` kind of ``exc`` (any exception a Redis call raised)."""
    # Order matters: the first three are ConnectionError subclasses in redis-py.
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        return Failure.AUTH
    if isinstance(exc, BusyLoadingError):
        return Failure.LOADING
    if isinstance(exc, ReadOnlyError):
        return Failure.READONLY
    if isinstance(exc, AskError):  # MovedError is a subclass
        return Failure.REDIRECT
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | asyncio.TimeoutError):
        return Failure.UNREACHABLE
    text = str(exc)
    if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return Failure.AUTH
    if text.startswith("READONLY"):
        return Failure.READONLY
    if text.startswith(("MOVED", "ASK")):
        return Failure.REDIRECT
    return Failure.ERROR


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis could not be reached (retry later), not a refusal."""
    return classify(exc) is Failure.UNREACHABLE


def describe(exc: BaseException) -> str:
    """``<wording> (<detail>)`` for a log line, e.g. ``unreachable (Connection refused)``."""
    detail = str(exc) or type(exc).__name__
    return f"{_WORDING[classify(exc)]} ({detail})"


async def retry_once(op: Callable[[], Awaitable[T]]) -> T:
    """Run ``op``; if it fails as unreachable, run it once more and return or raise that.

    For idempotent operations only (a read, a PING, a compare-and-extend, a publish
    whose replay consumers drop by ``(epoch, seq)``). A pooled connection whose server
    restarted fails on first use; redis-py drops it, so the second attempt opens a
    fresh one. A timeout is not retried: the server may still be running the command.
    """
    try:
        return await op()
    except (TimeoutError, RedisTimeoutError):
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) or not is_unreachable(exc):
            raise
    return await op()

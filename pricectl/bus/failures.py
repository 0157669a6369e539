"""What a Redis error means, for every Redis user (bus, lease, health, tail): one place.

redis-py's exception tree does not say what an operator needs to know. Its
``AuthenticationError`` (``NOAUTH``, ``WRONGPASS``) and ``BusyLoadingError`` (``LOADING``)
are subclasses of ``ConnectionError``, so a test of "is it a connection error" calls a
wrong password "unreachable"; ``READONLY`` (we are talking to a replica) and ``MOVED``
(a cluster slot lives elsewhere) are plain ``ResponseError`` subclasses; a sentinel's
port answers every data command with ``unknown command``. Each needs a different remedy,
so each gets its own :class:`Failure` kind and log wording:

==============  ==========================================  ==========================
kind            Redis said / what happened                  retry?
==============  ==========================================  ==========================
unreachable     connect refused, reset, EOF, timeout        yes, it may come back
loading         ``LOADING`` (restarting, reading its data)  yes, in a moment
readonly        ``READONLY`` (a replica, not the master)    yes, after a failover
no-master       the sentinels name no master for the        yes, a failover is under
                service (or do not know the name)           way, or fix the name
redirect        ``MOVED`` / ``ASK`` (cluster slot moved)    yes, with a fresh slot map
cluster-down    ``CLUSTERDOWN``, or a slot no primary       yes, once the cluster has
                serves (a failover under way)               promoted a replica
auth            ``NOAUTH`` / ``WRONGPASS`` / ``NOPERM``     no: fix the credentials
not-redis       ``unknown command`` for a data command      no: fix the URL (a
                (a sentinel's port, not a data node)        sentinel port?)
tls             a TLS handshake failed                      no: fix the scheme or certs
error           anything else (a bad command, OOM, ...)     as the caller sees fit
==============  ==========================================  ==========================

:func:`describe` is the short wording for a log line that already names the URL;
:func:`explain` is the sentence for a person (``health --redis``, ``tail``): what is
wrong at which URL and what to change.

Only ``unreachable`` errors, and a ``READONLY`` that redis-py's Sentinel pool has already
turned into a dropped connection, may be retried at once on a fresh connection (see
:func:`retry_once`): the command never reached a live master, and the next connection
asks the sentinels where the master is now.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    NoPermissionError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pricectl.core.redaction import redact

__all__ = ["Failure", "classify", "describe", "explain", "is_unreachable", "retry_once"]

T = TypeVar("T")

#: What redis-py's Sentinel connection raises after a READONLY reply from the node it
#: took for the master (it has disconnected, so the next connect asks the sentinels).
_DEMOTED = "The previous master is now a slave"

#: How pricectl's Sentinel manager starts its error when no sentinel answered at all,
#: and when one refused our credentials.
_NO_SENTINEL = "no sentinel reachable at "
_SENTINEL_AUTH = "authentication failed at the sentinels"
_DATA_NODE = "data node, not a sentinel"


class Failure(enum.Enum):
    """What kind of trouble a Redis error is (the table in the module docstring)."""

    UNREACHABLE = "unreachable"
    LOADING = "loading"
    READONLY = "readonly"
    NO_MASTER = "no-master"
    REDIRECT = "redirect"
    CLUSTER_DOWN = "cluster-down"
    AUTH = "auth"
    NOT_REDIS = "not-redis"
    TLS = "tls"
    ERROR = "error"


#: How each kind reads in a log line: ``redis at <url> <wording> (<detail>)``.
_WORDING = {
    Failure.UNREACHABLE: "unreachable",
    Failure.LOADING: "loading its data (not ready)",
    Failure.READONLY: "connected to a replica, not the master (READONLY)",
    Failure.NO_MASTER: "has no master: the sentinels name none for the service",
    Failure.REDIRECT: "redirected the command (cluster MOVED/ASK)",
    Failure.CLUSTER_DOWN: "cluster is down or a slot has no primary (failover under way?)",
    Failure.AUTH: "authentication failed",
    Failure.NOT_REDIS: "this is not a Redis server, perhaps a sentinel port",
    Failure.TLS: "TLS mismatch or TLS failure",
    Failure.ERROR: "error",
}

#: Where a Redis URL comes from, for the hint.
_WHERE = "bus.url, REDIS_URL or --redis"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def classify(exc: BaseException) -> Failure:
    """The :class:`Failure` kind of ``exc`` (any exception a Redis call raised)."""
    from redis.asyncio.sentinel import MasterNotFoundError

    # Order matters: the first ones are ConnectionError subclasses in redis-py.
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        return Failure.AUTH
    if isinstance(exc, BusyLoadingError):
        return Failure.LOADING
    if isinstance(exc, ReadOnlyError):
        return Failure.READONLY
    if isinstance(exc, MasterNotFoundError):
        # pricectl's Sentinel manager says which it was.
        if str(exc).startswith(_NO_SENTINEL):
            return Failure.UNREACHABLE
        if str(exc).startswith(_SENTINEL_AUTH):
            return Failure.AUTH
        if _DATA_NODE in str(exc):
            return Failure.NOT_REDIS
        return Failure.NO_MASTER
    if isinstance(exc, AskError):  # MovedError is a subclass
        return Failure.REDIRECT
    if isinstance(exc, ClusterDownError | SlotNotCoveredError):
        return Failure.CLUSTER_DOWN
    text = str(exc)
    if isinstance(exc, RedisConnectionError) and text.startswith(_DEMOTED):
        return Failure.READONLY
    if any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
        return Failure.TLS
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | asyncio.TimeoutError):
        return Failure.UNREACHABLE
    if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return Failure.AUTH
    if text.startswith("READONLY"):
        return Failure.READONLY
    if text.startswith(("MOVED", "ASK")):
        return Failure.REDIRECT
    if text.startswith("CLUSTERDOWN"):
        return Failure.CLUSTER_DOWN
    # Also inside a pipeline's "Command # 1 (GET ...) of pipeline caused error: ...".
    if isinstance(exc, ResponseError) and "unknown command" in text.lower():
        return Failure.NOT_REDIS
    return Failure.ERROR


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis could not be reached (retry later), not a refusal."""
    return classify(exc) is Failure.UNREACHABLE


def _retry_at_once(exc: BaseException) -> bool:
    kind = classify(exc)
    if kind is Failure.UNREACHABLE:
        return True
    # redis-py's Sentinel pool dropped the connection to the demoted master: the next one
    # goes where the sentinels say the master is now.
    return kind is Failure.READONLY and isinstance(exc, RedisConnectionError)


def describe(exc: BaseException) -> str:
    """``<wording> (<detail>)`` for a log line, e.g. ``unreachable (Connection refused)``."""
    detail = str(exc) or type(exc).__name__
    return f"{_WORDING[classify(exc)]} ({detail})"


async def retry_once(op: Callable[[], Awaitable[T]]) -> T:
    """Run ``op``; if it fails as unreachable, run it once more and return or raise that.

    For idempotent operations only (a read, a PING, a compare-and-extend, a publish
    whose replay consumers drop by ``(epoch, seq)``). A pooled connection whose server
    restarted fails on first use; redis-py drops it, so the second attempt opens a
    fresh one (through Sentinel: to the master the sentinels name now). A timeout is not
    retried: the server may still be running the command.
    """
    try:
        return await op()
    except (TimeoutError, RedisTimeoutError):
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) or not _retry_at_once(exc):
            raise
    return await op()


def _text(exc: BaseException) -> str:
    return str(exc).strip().rstrip(".") or type(exc).__name__


def explain(url: str, exc: BaseException) -> str:
    """One sentence on why Redis at ``url`` failed with ``exc``, naming the fix.

    redis-py reports a wrong password, a TLS mismatch and a stopped server in words that
    are easy to misread ("Timeout connecting to server" for ``rediss://`` against a plain
    Redis); this says what is wrong and what to change, with the URL redacted.
    """
    where = redact(url)
    scheme = url.partition("://")[0].lower()
    tls = scheme.startswith("rediss")
    # The scheme to suggest instead: rediss+sentinel:// <-> redis+sentinel://, ...
    plain = (scheme.replace("rediss", "redis", 1) if tls else "redis") + "://"
    secure = (
        scheme.replace("redis", "rediss", 1) if not tls and scheme.startswith("redis") else "rediss"
    ) + "://"
    chain = _chain(exc)
    kinds = [classify(e) for e in chain]
    texts = " ".join(_text(e) for e in chain).lower()
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        has_password = bool(parts.password) or "password=" in parts.query.lower()
    except ValueError:
        host, has_password = "", True
    data_node = next((e for e in chain if _DATA_NODE in str(e)), None)
    if data_node is not None:
        return _text(data_node)
    sentinel_auth = next((e for e in chain if str(e).startswith(_SENTINEL_AUTH)), None)
    if sentinel_auth is not None:
        return _text(sentinel_auth)
    if Failure.AUTH in kinds or "wrongpass" in texts or "username-password" in texts:
        if not has_password:
            return (
                f"Redis at {where}: authentication failed, it requires a password and the "
                f"URL gives none: put it in the URL (redis://:PASSWORD@host:port/db) in {_WHERE}"
            )
        return (
            f"Redis at {where}: authentication failed ({_text(chain[-1])}): "
            f"check the user and password in {_WHERE}"
        )
    if "without any password configured" in texts:
        return (
            f"Redis at {where} has no password set, but the URL gives one: "
            f"remove it from {_WHERE}, or set requirepass on the server"
        )
    if Failure.NOT_REDIS in kinds:
        return (
            f"Redis at {where}: this is not a Redis server, perhaps a sentinel port "
            f"({_text(chain[-1])}): point {_WHERE} at a data node, or use "
            "redis+sentinel://host:port,.../service for the sentinels"
        )
    no_sentinel = next((e for e in chain if str(e).startswith(_NO_SENTINEL)), None)
    if no_sentinel is not None:
        return (
            f"{_text(no_sentinel)}: are the sentinels running, and do they listen there? "
            f"check the host list of {where} in {_WHERE}"
        )
    if Failure.NO_MASTER in kinds:
        return (
            f"{_text(chain[-1])} ({where}): a failover is under way, or the service name "
            "is not the one given to `sentinel monitor`"
        )
    if Failure.READONLY in kinds:
        return (
            f"Redis at {where}: connected to a replica, not the master (READONLY): point "
            f"{_WHERE} at the master, or use redis+sentinel:// so the master is found"
        )
    if Failure.REDIRECT in kinds:
        return (
            f"Redis at {where} is a cluster node that redirects (MOVED/ASK): use "
            "redis+cluster://host:port,... so pricectl follows the cluster's slots"
        )
    if Failure.CLUSTER_DOWN in kinds:
        return (
            f"the Redis Cluster at {where} is down or has a slot no primary serves "
            f"({_text(chain[-1])}): a failover under way, or too few primaries left"
        )
    if Failure.TLS in kinds:
        if tls:
            return (
                f"TLS with Redis at {where} failed ({_text(chain[-1])}): check its "
                f"certificate, or use {plain} if it does not speak TLS"
            )
        return (
            f"Redis at {where} answered with TLS, or not as Redis ({_text(chain[-1])}): "
            f"if it only speaks TLS, use {secure}"
        )
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"cannot resolve the Redis host {host or where!r}: check the host in {_WHERE}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in texts:
        return (
            f"nothing listens at {where} (connection refused): is redis-server running "
            f"there? check {_WHERE}"
        )
    if any(isinstance(e, (RedisTimeoutError, TimeoutError)) for e in chain):
        if tls:
            return (
                f"no TLS answer from Redis at {where} (timed out): TLS mismatch? if this "
                f"Redis does not speak TLS, use {plain} instead of {scheme}://"
            )
        return (
            f"no answer from Redis at {where} (timed out): is it paused, overloaded, or "
            "behind a firewall that drops the connection?"
        )
    if not tls and "closed by server" in texts:
        return (
            f"Redis at {where} closed the connection at once: TLS mismatch? if it only "
            f"speaks TLS, use {secure}"
        )
    if any(isinstance(e, ResponseError) for e in chain):
        return f"Redis at {where} refused a command: {_text(chain[-1])}"
    if Failure.UNREACHABLE in kinds:
        return f"cannot reach Redis at {where}: {_text(chain[-1])}"
    return f"Redis at {where} failed: {_text(exc)}"

"""Why Redis could not be used, in one sentence that names the fix.

redis-py reports a wrong password, a missing one, a TLS mismatch and a stopped server in
words that are easy to misread ("Timeout connecting to server" for ``rediss://`` against
a plain Redis; "invalid username-password pair" wrapped as "unreachable").
:func:`explain` turns the exception (or the :class:`~pricectl.errors.BusError` wrapping
it) into one line that says what is wrong and what to change, with the URL redacted.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pricectl.config import redact_url

__all__ = ["explain"]

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


def _text(exc: BaseException) -> str:
    return str(exc).strip().rstrip(".") or type(exc).__name__


def explain(url: str, exc: BaseException) -> str:
    """One line on why Redis at ``url`` failed with ``exc``, naming the fix."""
    where = redact_url(url)
    scheme = url.partition("://")[0]
    chain = _chain(exc)
    texts = " ".join(_text(e) for e in chain).lower()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        has_password = bool(parts.password) or "password=" in parts.query.lower()
    except ValueError:
        host, has_password = "", True
    if (
        any(isinstance(e, AuthenticationError) for e in chain)
        or "noauth" in texts
        or ("wrongpass" in texts or "username-password" in texts)
    ):
        if not has_password:
            return (
                f"Redis at {where} requires a password and the URL gives none: "
                f"put it in the URL (redis://:PASSWORD@host:port/db) in {_WHERE}"
            )
        return (
            f"Redis at {where} refused the password ({_text(chain[-1])}): "
            f"check the password in {_WHERE}"
        )
    if "without any password configured" in texts:
        return (
            f"Redis at {where} has no password set, but the URL gives one: "
            f"remove it from {_WHERE}, or set requirepass on the server"
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        if scheme == "rediss":
            return f"TLS with Redis at {where} failed ({_text(chain[-1])}): check its certificate"
        return (
            f"Redis at {where} answered with TLS, or not as Redis ({_text(chain[-1])}): "
            "if it only speaks TLS, use rediss://"
        )
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"cannot resolve the Redis host {host or where!r}: check the host in {_WHERE}"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return (
            f"nothing listens at {where} (connection refused): is redis-server running "
            f"there? check {_WHERE}"
        )
    if any(isinstance(e, (RedisTimeoutError, TimeoutError)) for e in chain):
        if scheme == "rediss":
            return (
                f"no TLS answer from Redis at {where} (timed out): if this Redis does not "
                "speak TLS, use redis:// instead of rediss://"
            )
        return (
            f"no answer from Redis at {where} (timed out): is it paused, overloaded, or "
            "behind a firewall that drops the connection?"
        )
    if scheme == "redis" and "closed by server" in texts:
        return (
            f"Redis at {where} closed the connection at once: if it only speaks TLS, use rediss://"
        )
    if any(isinstance(e, ResponseError) for e in chain):
        return f"Redis at {where} refused a command: {_text(chain[-1])}"
    if any(isinstance(e, (RedisConnectionError, OSError)) for e in chain):
        return f"cannot reach Redis at {where}: {_text(chain[-1])}"
    return f"Redis at {where} failed: {_text(exc)}"

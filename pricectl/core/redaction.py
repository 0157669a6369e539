"""The one redaction rule: no secret from a URL reaches a log line, a response or an error.

A Redis URL carries its password in one of two places, and both are accepted by
redis-py (``redis.asyncio.from_url``)::

    redis://user:secret@host:6379/0          the userinfo (RFC 3986 section 3.2.1)
    redis://host:6379/0?password=secret      a query argument

and so do ``rediss://`` (TLS), ``unix:///path/redis.sock?password=secret``,
``unix://:secret@/path/redis.sock`` and the several hosts of a Sentinel URL
(``redis+sentinel://:secret@h1:26379,h2:26379/mymaster``). :func:`redact` replaces the
secret with ``***`` wherever such a URL appears in a piece of text: a URL alone, a
log message that names one, or an exception's text. It works on the text, never by
parsing the URL into host and port, so a URL that does not parse (a port that is not a
number, several hosts) is redacted all the same, and it never raises.

It errs on the side of hiding: a password that holds an unescaped ``/`` or ``#`` is
still hidden whole, up to the last ``@`` of the URL.
"""

from __future__ import annotations

import re

__all__ = ["SECRET_QUERY_KEYS", "redact"]

#: Query arguments whose value is a secret (compared without regard to case).
SECRET_QUERY_KEYS = (
    "password",
    "passwd",
    "pass",
    "pwd",
    "sentinel_password",
    "secret",
    "token",
    "access_token",
    "auth",
    "api_key",
    "apikey",
)

_MASK = "***"

# scheme://user:secret@  (user may be empty; secret runs to the last @ before a space).
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s'\"]*):(?P<secret>[^@\s'\"]*)@"
)
# ?password=secret or &password=secret (also ; as a separator).
_QUERY = re.compile(
    r"(?P<head>[?&;](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)(?P<secret>[^&;#\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the secret of every URL in it replaced by ``***``.

    >>> redact("redis://:hunter2@127.0.0.1:6379/0")
    'redis://:***@127.0.0.1:6379/0'
    >>> redact("bus rediss://127.0.0.1:6380/0?password=hunter2&db=1")
    'bus rediss://127.0.0.1:6380/0?password=***&db=1'
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{_MASK}@" if m["secret"] else m[0], text)
    return _QUERY.sub(lambda m: m["head"] + _MASK if m["secret"] else m[0], text)

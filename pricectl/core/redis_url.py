"""What a Redis URL names: one server, a Sentinel service, or a Redis Cluster (pure).

Three shapes, each also with TLS (``rediss``)::

    redis://[[user]:password@]host[:port][/db]                  one server (also unix://)
    redis+sentinel://[[user]:password@]h1:p1,h2:p2,.../service[/db][?sentinel_password=...]
    rediss+sentinel://...?ssl_ca_certs=/path/ca.crt[&ssl_certfile=...&ssl_keyfile=...]
    redis+cluster://[[user]:password@]h1:p1[,h2:p2,...]

A Sentinel URL lists the sentinels (port 26379 when left out) and names the service
(``sentinel monitor <service> ...``); the password in the userinfo is the data nodes'
(``requirepass``), ``sentinel_password`` (and ``sentinel_username``) the sentinels' own
if they have one. ``rediss+sentinel`` speaks TLS to the sentinels and to the data nodes;
``ssl_ca_certs`` (a PEM file of the CA that signed their certificates) and, for servers
that check clients (``tls-auth-clients yes``), ``ssl_certfile`` and ``ssl_keyfile`` go in
its query, under redis-py's names for them. A Cluster URL lists any nodes of the cluster
(port 6379 when left out); the client learns the rest from them. Plain URLs are left to
redis-py's own parser: :func:`parse_redis_url` only sorts them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

from pricectl.core.redaction import redact

__all__ = [
    "CLUSTER_FORM",
    "CLUSTER_SCHEMES",
    "SENTINEL_FORM",
    "SENTINEL_SCHEMES",
    "RedisTarget",
    "parse_redis_url",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

SENTINEL_FORM = "redis+sentinel://[[user]:password@]host1:port1,host2:port2,.../service[/db]"
CLUSTER_FORM = "redis+cluster://[[user]:password@]host:port[,host:port...]"

#: Query arguments a Sentinel URL may carry.
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
#: TLS query arguments a ``rediss+sentinel`` URL may carry (redis-py's keyword names).
_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed URL. ``kind`` is ``standalone`` for anything redis-py parses itself."""

    kind: Literal["standalone", "sentinel", "cluster"]
    url: str
    tls: bool = False
    #: Sentinels (sentinel) or seed nodes (cluster), in URL order.
    hosts: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service (master) name.
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: TLS options from the query (``ssl_ca_certs``, ...), as redis-py keywords.
    tls_options: tuple[tuple[str, str], ...] = ()


def _hosts(text: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"an empty host in the host list of {shown!r}")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"bad host {item!r} in {shown!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"no host in {item!r} of {shown!r}")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"port {port_text!r} is not a number from 1 to 65535 in {shown!r}")
            port = int(port_text)
        else:
            port = default_port
        out.append((host, port))
    return tuple(out)


def parse_redis_url(url: str) -> RedisTarget:
    """The :class:`RedisTarget` of ``url``; ``ValueError`` with a sentence that names the
    problem (the URL redacted) when it is a Sentinel or Cluster URL that is not right.

    Plain ``redis://``, ``rediss://`` and ``unix://`` URLs come back as ``standalone``
    unchecked: the config's own check and redis-py read those.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        return RedisTarget("standalone", url, tls=scheme == "rediss")
    shown = redact(url)
    sentinel = scheme in SENTINEL_SCHEMES
    form = SENTINEL_FORM if sentinel else CLUSTER_FORM
    if "#" in rest:
        raise ValueError(f"a URL fragment ('#') is not allowed in {shown!r}")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hostlist:
        raise ValueError(f"no host in {shown!r}: expected {form}")
    hosts = _hosts(hostlist, 26379 if sentinel else 6379, shown)
    options = dict(parse_qsl(query, keep_blank_values=True))
    if sentinel:
        tls = scheme.startswith("rediss")
        unknown = sorted(set(options) - set(_SENTINEL_QUERY) - set(_TLS_QUERY))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} in {shown!r}: a Sentinel URL takes "
                + ", ".join(_SENTINEL_QUERY + _TLS_QUERY)
            )
        tls_options = tuple((k, options[k]) for k in _TLS_QUERY if options.get(k))
        if tls_options and not tls:
            raise ValueError(
                f"{tls_options[0][0]} in {shown!r} is a TLS option: use rediss+sentinel:// "
                "for TLS to the sentinels and the data nodes"
            )
        parts = [p for p in path.split("/")] if slash else []
        if parts and parts[-1] == "":
            parts.pop()
        if not parts or not parts[0]:
            raise ValueError(
                f"no service name in {shown!r}: expected {form} "
                "(the name given to `sentinel monitor`)"
            )
        if len(parts) > 2:
            raise ValueError(f"too many path parts in {shown!r}: expected {form}")
        db = 0
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise ValueError(f"database {parts[1]!r} is not a number in {shown!r}")
            db = int(parts[1])
        return RedisTarget(
            "sentinel",
            url,
            tls=tls,
            hosts=hosts,
            service=unquote(parts[0]),
            db=db,
            username=username,
            password=password,
            sentinel_username=options.get("sentinel_username") or None,
            sentinel_password=options.get("sentinel_password") or None,
            tls_options=tls_options,
        )
    if options:
        raise ValueError(f"unknown option {sorted(options)[0]!r} in {shown!r}: expected {form}")
    if path.strip("/") not in ("", "0"):
        raise ValueError(
            f"database {path.strip('/')!r} in {shown!r}: a Redis Cluster has only database 0"
        )
    return RedisTarget(
        "cluster",
        url,
        tls=scheme.startswith("rediss"),
        hosts=hosts,
        username=username,
        password=password,
    )

"""Redis key and channel names (docs/architecture.md, "The bus" and "The lease"), all behind
the configurable prefix.

The prefix lets several deployments share one Redis (``bus.prefix: "staging:"``).

On a Redis Cluster the lease, the epoch, the heartbeat, the snapshot hash and the
lease's channels must share one hash slot (the fenced scripts touch them together), so
the bus names them after :func:`slot_prefix`, which puts a hash tag in whatever the
prefix is; the price channels keep the plain prefix, so each pair's channel lives on
the shard its own name hashes to (sharded pub/sub spreads them over the cluster).
"""

from __future__ import annotations

__all__ = [
    "channel",
    "epoch",
    "heartbeat",
    "latest",
    "leader",
    "lease_channel",
    "presence_channel",
    "presence_prefix",
    "slot_prefix",
    "wanted",
    "wanted_channel",
]


def slot_prefix(prefix: str) -> str:
    """``prefix`` with a hash tag, for the keys that must share a cluster slot: kept as it
    is when it already holds one (``{pricectl}:``), else ``{staging}:`` for ``staging:``
    and ``{pricectl}:`` for no prefix. Only a Redis Cluster URL uses it."""
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 2) > start:
        return prefix
    return "{" + (prefix.rstrip(":") or "pricectl") + "}:"


def channel(prefix: str, pair: str) -> str:
    """Pub/sub channel of one pair: payload is one update object (docs/protocol.md,
    "The update object")."""
    return f"{prefix}prices:{pair}"


def latest(prefix: str) -> str:
    """Hash pair -> latest update object as JSON: the snapshot a consumer reads on
    (re)connect."""
    return f"{prefix}prices:latest"


def leader(prefix: str) -> str:
    """String key holding the current leader's token, with the lease TTL as its expiry."""
    return f"{prefix}pricectl:leader"


def epoch(prefix: str) -> str:
    """Counter of leadership terms: its value is the current leader's fencing epoch.

    Only a successful acquire moves it, so "the fence's epoch equals this value" means
    "no one has acquired the lease since that fence was granted".
    """
    return f"{prefix}pricectl:epoch"


def lease_channel(prefix: str) -> str:
    """Channel on which a leader announces ``released`` so standbys take over at once
    instead of at their next poll (docs/architecture.md, "The lease")."""
    return f"{prefix}pricectl:lease"


def presence_prefix(prefix: str) -> str:
    """What every candidate's presence channel starts with (the token follows)."""
    return f"{prefix}pricectl:alive:"


def presence_channel(prefix: str, token: str) -> str:
    """Channel a candidate stays subscribed to for its whole life, named after its token.

    Redis drops the subscription the moment the process's connection closes (a crash
    included), so ``PUBSUB NUMSUB`` of the lease holder's channel falling to 0 tells the
    standbys the leader is dead without waiting for the lease TTL (docs/architecture.md,
    "The lease").
    """
    return f"{presence_prefix(prefix)}{token}"


def heartbeat(prefix: str) -> str:
    """String key the leader rewrites every second (``<epoch> <token> <ms>``, fenced, with
    a short expiry): a consumer that sees it move knows a leader is alive and publishing
    even while the market is quiet, and one that sees it stand still knows none is."""
    return f"{prefix}pricectl:heartbeat"


def wanted(prefix: str) -> str:
    """Sorted set pair -> the wall-clock ms it was last wanted by any serve (the score).

    Every serve ``ZADD GT``s the pairs its clients watch every few seconds; a pair whose
    score is older than ``exchange.idle_grace`` is nobody's any more and is removed by
    whoever reads it next. One structure for the cluster: a new leader reads it whole.
    """
    return f"{prefix}pricectl:wanted"


def wanted_channel(prefix: str) -> str:
    """Channel on which a serve says it wants a pair that was not wanted before, so the
    leader subscribes at once rather than at its next read of :func:`wanted`."""
    return f"{prefix}pricectl:wanted:wake"

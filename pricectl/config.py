"""YAML + environment -> frozen, validated settings holding core's policies
(config/pricectl.yaml).

Every setting is a field of a frozen dataclass, with its default. The sections that are
core policies are those policies themselves (``leader`` is a
:class:`~pricectl.core.lease.LeasePolicy`, ``resilience.backoff`` a
:class:`~pricectl.core.backoff.BackoffPolicy`, ...): each policy validates its own values
and this module reports what it refuses like any other problem. The shipped
``config/pricectl.yaml`` holds the same defaults with a comment each (a test checks
that they agree), so the program runs with no file at all.

Errors name the file, the line, the dotted key, what was expected and what was
found, and every problem in a file is reported at once::

    config/pricectl.yaml:14: leader.renew_deadline: must be shorter than leader.ttl (15s), got 20s

Environment overrides (applied after the file): ``BINANCE_WS_URL``,
``BINANCE_REST_URL``, ``REDIS_URL``, ``LOG_LEVEL``,
``PRICE_STREAM_UPDATE_DEBOUNCE_MS``, ``PRICECTL_<SECTION>__<KEY>`` for any
setting (``PRICECTL_LEADER__TTL=20s``, ``PRICECTL_RESILIENCE__BACKOFF__MAX=30s``),
and ``PRICECTL_PAIRS`` / ``PRICECTL_QUOTE_ALIASES`` for the two top-level keys.
Values from the environment are read as YAML scalars (``true``, ``5``, ``[a, b]``),
except for a string setting, whose value is taken literally (``PRICECTL_BUS__PREFIX=staging:``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from pricectl.core.backoff import BackoffPolicy
from pricectl.core.breaker import BreakerPolicy
from pricectl.core.demand import MIN_IDLE_GRACE, DemandPolicy
from pricectl.core.duration import duration as _dur
from pricectl.core.duration import format_duration, is_duration, parse_duration
from pricectl.core.fallback import FallbackPolicy
from pricectl.core.heartbeat import HeartbeatPolicy
from pricectl.core.lease import LeasePolicy
from pricectl.core.pairs import PairMap, canonical_pair, known_symbols, parse_pair
from pricectl.core.policy import PolicyError
from pricectl.core.redaction import redact
from pricectl.core.redis_url import CLUSTER_FORM, SENTINEL_FORM, parse_redis_url
from pricectl.core.universe import MIN_UNIVERSE_REFRESH
from pricectl.errors import ConfigError

__all__ = [
    "BusSettings",
    "ExchangeSettings",
    "LoadtestSettings",
    "LoggingSettings",
    "ResilienceSettings",
    "ServerSettings",
    "Settings",
    "check_redis_url",
    "format_duration",
    "load_settings",
    "parse_duration",
    "redact_url",
    "settings_to_dict",
]

StreamKind = Literal["ticker", "miniTicker", "bookTicker", "aggTrade", "trade"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class ExchangeSettings:
    """Where the exchange is and how we read it."""

    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    stream: StreamKind = "ticker"
    check_symbols: bool = True
    max_connection_age: float = _dur(23 * 3600.0)
    connect_timeout: float = _dur(10.0)
    rest_timeout: float = _dur(10.0)
    rest_weight_budget: int = 1200
    max_messages_per_second: float = 4.0
    max_connects_per_5m: int = 300
    streams_per_connection: int = 200
    #: Most pairs the cluster subscribes to at once (pinned included).
    max_pairs: int = 1500
    #: A pair nobody has wanted for this long is unsubscribed (its snapshot kept, stale).
    idle_grace: float = _dur(60.0)
    #: How often ingest and serve re-read exchangeInfo (the servable pairs).
    universe_refresh: float = _dur(3600.0)


@dataclass(frozen=True)
class BusSettings:
    """The bus between ingest and serve."""

    url: str = "memory://"
    prefix: str = ""


@dataclass(frozen=True)
class ResilienceSettings:
    """The shared resilience core (docs/architecture.md, "The resilience core"): the
    policies of ``pricectl.core``."""

    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)


@dataclass(frozen=True)
class ServerSettings:
    """``pricectl serve``."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    ping_interval: float = _dur(15.0)
    retry: float = _dur(3.0)
    retry_jitter: float = _dur(2.0)
    overload_retry: float = _dur(30.0)
    history_size: int = 4096
    max_connections: int = 19900
    max_connections_per_ip: int = 0
    max_pairs_per_connection: int = 50
    #: Inactive pairs one client address, and this whole process, may turn on per minute.
    activations_per_ip: int = 20
    activations: int = 200
    high_water: int = 65536
    #: SO_SNDBUF of stream sockets (bytes; 0: the same as high_water).
    send_buffer: int = 0
    #: Most events, and bytes (0: the same as high_water), one resume may replay.
    resume_max_events: int = 1000
    resume_max_bytes: int = 0
    write_timeout: float = _dur(30.0)
    #: From connect (or a next request's first byte) to a complete request head.
    request_head_timeout: float = _dur(5.0)
    #: An idle kept-alive connection between requests.
    keepalive_timeout: float = _dur(10.0)
    drain_window: float = _dur(5.0)
    cors_origins: tuple[str, ...] = ()
    update_debounce_ms: int = 250


@dataclass(frozen=True)
class LoadtestSettings:
    """Defaults for ``pricectl loadtest``."""

    clients: int = 1000
    duration: float = _dur(30.0)
    ramp: int = 2000
    processes: int = 0
    max_p99_ms: float = 0.0
    min_delivery: float = 0.0


@dataclass(frozen=True)
class LoggingSettings:
    """Log level and format."""

    level: LogLevel = "info"
    format: LogFormat = "text"


_DEFAULT_PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD", "BNB/USD", "XRP/USD")


@dataclass(frozen=True)
class Settings:
    """The whole configuration, frozen after validation."""

    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    pairs: tuple[str, ...] = _DEFAULT_PAIRS
    quote_aliases: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({"USD": "USDT"})
    )
    bus: BusSettings = field(default_factory=BusSettings)
    #: The ingest leader lease (docs/architecture.md, "The lease"), in the spirit of
    #: client-go's defaults.
    leader: LeasePolicy = field(default_factory=LeasePolicy)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    loadtest: LoadtestSettings = field(default_factory=LoadtestSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    #: Where the settings came from (a file path, or "defaults").
    source: str = field(default="defaults", compare=False)

    @property
    def pair_map(self) -> PairMap:
        """The configured pairs with their exchange symbols."""
        cached: PairMap | None = self.__dict__.get("_pair_map")
        if cached is None:
            # Canonical names (VET/USDT -> VET/USD with USD: USDT), as requests resolve
            # them through the exchange's list: a pinned pair is then known as pinned.
            cached = PairMap.build(
                [canonical_pair(p, self.quote_aliases) for p in self.pairs], self.quote_aliases
            )
            object.__setattr__(self, "_pair_map", cached)
        return cached

    @property
    def demand(self) -> DemandPolicy:
        """The demand policy (:mod:`pricectl.core.demand`) from ``exchange`` and ``server``."""
        e, s = self.exchange, self.server
        return DemandPolicy(
            idle_grace=e.idle_grace,
            max_pairs=e.max_pairs,
            refresh=min(5.0, e.idle_grace / 3.0),
            per_ip=max(1, s.activations_per_ip),
            total=max(1, s.activations),
            window=60.0,
        )


# --- YAML with line numbers ----------------------------------------------------------------


def _compose(text: str, origin: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML keeping the line (1-based) of every dotted key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}{line}: not valid YAML: {problem}") from None
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, path: str) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for k, v in n.value:
                key_value = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                sub = f"{path}.{key_value}" if path else str(key_value)
                lines[sub] = k.start_mark.line + 1
                out[key_value] = walk(v, sub)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(n.value)]
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(n, deep=True)
        finally:
            loader.dispose()

    if node is None:
        return {}, lines
    return walk(node, ""), lines


# --- validation --------------------------------------------------------------------------


class _Problems:
    """Every problem of one configuration, each as ``where: dotted.key: message``."""

    def __init__(self, origin: str, lines: dict[str, int]) -> None:
        self.origin = origin
        self.lines = lines
        self.items: list[str] = []
        self.env_origin: dict[str, str] = {}
        #: ``(section, dotted key, message)`` refused by a section's own dataclass, held
        #: back by :meth:`refuse` until :meth:`settle`.
        self.refused: list[tuple[str, str, str]] = []

    def add(self, path: str, message: str) -> None:
        where = self.env_origin.get(path)
        if where is None:
            line = self.lines.get(path)
            where = f"{self.origin}:{line}" if line else self.origin
        self.items.append(f"{where}: {path}: {message}")

    def refuse(self, section: str, error: ValueError) -> None:
        """The dataclass of ``section`` refused its values (a core policy's rules)."""
        if isinstance(error, PolicyError):
            prefix = f"{section}." if section else ""
            for p in error.problems:
                self.refused.append((section, prefix + p.field, p.message(prefix)))
        else:
            self.refused.append((section, section or "(top level)", str(error)))

    def settle(self, cls: type) -> None:
        """Add the refused values after the type errors, section by section in the order
        ``cls`` declares them, each section's problems in its rules' order: the list then
        reads the same whatever order the file or the environment gave the sections in."""
        order = {name: i for i, name in enumerate(_sections(cls))}
        for _, key, message in sorted(self.refused, key=lambda r: order.get(r[0], -1)):
            self.add(key, message)
        self.refused.clear()


def _sections(cls: type, path: str = "") -> Iterator[str]:
    """The dotted path of every dataclass section under ``cls``, depth first, as declared."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = f"{path}.{f.name}" if path else f.name
            yield sub
            yield from _sections(tp, sub)  # type: ignore[arg-type]


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _build(cls: type, raw: Any, path: str, problems: _Problems) -> Any:
    """Turn a raw mapping into ``cls`` (a settings dataclass), recording every problem.

    A section whose dataclass refuses its values (a policy's ``__post_init__`` raising
    ``ValueError``) is recorded and replaced by its defaults, so the rest can still be
    built and checked. Called at the top level (``path`` empty), it settles those
    refusals into ``problems.items`` before returning.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(path or "(top level)", f"expected a mapping of settings, got {_show(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = _closest(str(key), names)
            hint = f" (did you mean {close}?)" if close else ""
            problems.add(sub, f"unknown key{hint}; expected one of {', '.join(names)}")
            continue
        f = names[key]
        try:
            kwargs[key] = _convert(hints[key], f, value, sub, problems)
        except ValueError as exc:
            problems.add(sub, f"expected {exc}, got {_show(value)}")
    try:
        built = cls(**kwargs)
    except ValueError as exc:
        problems.refuse(path, exc)
        built = cls()
    if not path:
        problems.settle(cls)
    return built


def _closest(key: str, names: Mapping[str, Any]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return match[0] if match else None


def _convert(tp: Any, f: dataclasses.Field[Any], value: Any, path: str, problems: _Problems) -> Any:
    if is_duration(f):
        return parse_duration(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("a whole number >= 0")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("a number >= 0")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError("a string")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("a list of strings")
        return tuple(value)
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError("a mapping of strings to strings")
        return types.MappingProxyType(dict(value))
    raise ValueError(f"a value of type {tp}")  # pragma: no cover - schema error


def _check(s: Settings, problems: _Problems) -> None:
    """Rules across fields that no policy owns: the exchange's limits, URLs, pairs.

    The policies' own rules (``leader.retry < leader.renew_deadline``, ...) were applied
    when :func:`_build` made them.
    """
    if s.exchange.max_messages_per_second <= 0 or s.exchange.max_messages_per_second > 5:
        problems.add(
            "exchange.max_messages_per_second",
            "must be above 0 and at most 5 (Binance's limit), "
            f"got {s.exchange.max_messages_per_second}",
        )
    if not 0 < s.exchange.max_connects_per_5m <= 300:
        problems.add(
            "exchange.max_connects_per_5m",
            f"must be 1 to 300 (Binance's limit), got {s.exchange.max_connects_per_5m}",
        )
    if not 1 <= s.exchange.streams_per_connection <= 1024:
        problems.add(
            "exchange.streams_per_connection",
            "must be 1 to 1024 (Binance's limit per connection), "
            f"got {s.exchange.streams_per_connection}",
        )
    for key, schemes in (("ws_url", ("ws", "wss")), ("rest_url", ("http", "https"))):
        url = getattr(s.exchange, key)
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.netloc:
            problems.add(f"exchange.{key}", f"expected a {'/'.join(schemes)}:// URL, got {url!r}")
    if not s.bus.url.startswith("memory://"):
        problem = check_redis_url(s.bus.url, allow_memory=True)
        if problem is not None:
            problems.add("bus.url", problem)
    if not 0 < s.server.port < 65536 and s.server.port != 0:
        problems.add("server.port", f"must be 0 to 65535, got {s.server.port}")
    if s.server.workers < 1:
        problems.add("server.workers", "must be at least 1")
    if s.exchange.max_pairs < len(s.pairs) or s.exchange.max_pairs < 1:
        problems.add(
            "exchange.max_pairs",
            f"must be at least 1 and at least the {len(s.pairs)} pinned pairs, "
            f"got {s.exchange.max_pairs}",
        )
    if not s.exchange.idle_grace >= MIN_IDLE_GRACE:
        problems.add(
            "exchange.idle_grace",
            f"must be at least {format_duration(MIN_IDLE_GRACE)}, got "
            f"{format_duration(s.exchange.idle_grace)}: serves renew the pairs their clients "
            "watch every idle_grace/3 (at most 5s), so a shorter grace only spends bus "
            "round trips",
        )
    if not s.exchange.universe_refresh >= MIN_UNIVERSE_REFRESH:
        problems.add(
            "exchange.universe_refresh",
            f"must be at least {format_duration(MIN_UNIVERSE_REFRESH)}, got "
            f"{format_duration(s.exchange.universe_refresh)}: each exchangeInfo read costs "
            "20 of the 1200 REST weight a minute allows, which the REST snapshots of new "
            "pairs need",
        )
    if s.server.activations_per_ip < 1 or s.server.activations < 1:
        problems.add(
            "server.activations_per_ip"
            if s.server.activations_per_ip < 1
            else "server.activations",
            "must be at least 1 (activations of inactive pairs per minute)",
        )
    if s.server.max_pairs_per_connection < 1:
        problems.add("server.max_pairs_per_connection", "must be at least 1")
    if not 0 <= s.loadtest.min_delivery <= 1:
        problems.add(
            "loadtest.min_delivery", f"must be between 0 and 1, got {s.loadtest.min_delivery}"
        )
    _check_pairs(s, problems)


def _check_pairs(s: Settings, problems: _Problems) -> None:
    if not s.pairs:
        problems.add("pairs", "expected at least one pair such as BTC/USD, got an empty list")
        return
    universe = known_symbols() if s.exchange.check_symbols else {}
    seen: set[str] = set()
    for i, text in enumerate(s.pairs):
        path = f"pairs[{i}]"
        try:
            base, quote = parse_pair(text)
        except ValueError as exc:
            problems.add(path, str(exc))
            continue
        pair = canonical_pair(text, s.quote_aliases)
        if pair in seen:
            problems.add(path, f"duplicate pair {pair}")
            continue
        seen.add(pair)
        quote = pair.partition("/")[2]
        symbol = base + s.quote_aliases.get(quote, quote)
        if universe and symbol not in universe:
            problems.add(
                path,
                f"unknown pair {pair}: Binance spot has no symbol {symbol} "
                "(checked against the bundled symbol list; "
                "set exchange.check_symbols: false to skip this check)",
            )


# --- environment -------------------------------------------------------------------------

#: The conventional variables, and the dotted key each one sets.
ENV_ALIASES = {
    "BINANCE_WS_URL": "exchange.ws_url",
    "BINANCE_REST_URL": "exchange.rest_url",
    "REDIS_URL": "bus.url",
    "LOG_LEVEL": "logging.level",
    "PRICE_STREAM_UPDATE_DEBOUNCE_MS": "server.update_debounce_ms",
}


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """``[(variable, dotted.key, value)]`` from the environment, in a stable order."""
    out: list[tuple[str, str, Any]] = []
    for name, path in ENV_ALIASES.items():
        if name in env:
            value: Any = env[name]
            if path == "logging.level":
                value = value.lower()
            elif path == "server.update_debounce_ms":
                value = _scalar(value)
            out.append((name, path, value))
    for name in sorted(env):
        if name in ("PRICECTL_PAIRS", "PRICECTL_QUOTE_ALIASES") or (
            name.startswith("PRICECTL_") and "__" in name
        ):
            path = name[len("PRICECTL_") :].lower().replace("__", ".")
            text = env[name]
            out.append((name, path, _literal(text) if _is_text(path) else _scalar(text)))
    return out


def _literal(text: str) -> str:
    """A string setting's value: the text itself, or what is inside YAML quotes
    (``'"staging:"'`` stays ``staging:``, as it always read)."""
    if text[:1] in ("'", '"'):
        with contextlib.suppress(yaml.YAMLError):
            value = yaml.safe_load(text)
            if isinstance(value, str):
                return value
    return text


def _is_text(path: str) -> bool:
    """Whether the setting at ``path`` is a string (or one of some strings): its value
    from the environment is then taken literally, so ``PRICECTL_BUS__PREFIX=staging:``
    is the prefix ``staging:``, not a YAML mapping."""
    cls: Any = Settings
    tp: Any = None
    for key in path.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return False
        tp = typing.get_type_hints(cls).get(key)
        if tp is None:
            return False
        cls = tp
    if tp is str:
        return True
    return typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))


def _scalar(text: str) -> Any:
    if not text.strip():
        return text  # an empty variable is an empty string (PRICECTL_BUS__PREFIX=), not null
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = value


# --- entry points ------------------------------------------------------------------------


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or only defaults), apply the environment, validate everything.

    Raises :class:`ConfigError` whose ``problems`` lists every problem found.
    """
    env = os.environ if env is None else env
    origin = "defaults"
    raw: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read the config file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{origin}: not a YAML text file: byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start} is not UTF-8"
            ) from None
        raw, lines = _compose(text, origin)
    problems = _Problems(origin, lines)
    if not isinstance(raw, dict):
        problems.add("(top level)", f"expected a mapping of sections, got {_show(raw)}")
        raw = {}
    for name, dotted, value in _env_overrides(env):
        _set_path(raw, dotted, value)
        problems.env_origin[dotted] = f"environment {name}"
    settings: Settings = _build(Settings, raw, "", problems)
    _check(settings, problems)  # a field that failed to parse holds its default here
    if problems.items:
        n = len(problems.items)
        head = problems.items[0] if n == 1 else f"{origin}: {n} problems in the configuration"
        raise ConfigError(head, problems.items)
    return dataclasses.replace(settings, source=origin)


_REDIS_FORM = "redis://[[user]:password@]host[:port][/db]"


def check_redis_url(url: str, *, allow_memory: bool = False) -> str | None:
    """What is wrong with the Redis URL ``url`` (one sentence, the URL redacted), or None.

    The rule of ``bus.url``, ``--redis`` and ``REDIS_URL`` alike, checked before anything
    connects: a scheme pricectl takes (``redis://``, ``rediss://`` for TLS, ``unix://``,
    ``redis+sentinel://`` / ``rediss+sentinel://`` for a Sentinel service,
    ``redis+cluster://`` / ``rediss+cluster://`` for a Redis Cluster), a host, a port
    that is a number from 1 to 65535, a database that is a number
    (:func:`pricectl.core.redis_url.parse_redis_url` for the Sentinel and Cluster forms).
    """
    shown = redact(url)
    schemes = "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
    if allow_memory:
        schemes = "memory://, " + schemes
    try:
        target = parse_redis_url(url)
    except ValueError as exc:
        return str(exc)
    if target.kind != "standalone":
        return None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"expected a URL such as {_REDIS_FORM}, got {shown!r} ({exc})"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"expected {schemes}, got {shown!r}"
    if parts.scheme == "unix":
        if not parts.path:
            return f"expected unix:///path/to/redis.sock, got {shown!r}"
        return None
    hostinfo = parts.netloc.rpartition("@")[2]
    if "," in hostinfo:
        return (
            f"several hosts in {shown!r}: for Sentinel use {SENTINEL_FORM}, "
            f"for a Redis Cluster {CLUSTER_FORM}"
        )
    if "sentinel" in parts.query.lower():
        return (
            f"a Sentinel service is named in the URL's path, not in its query ({shown!r}): "
            f"expected {SENTINEL_FORM}"
        )
    if hostinfo.startswith("["):
        host, _, rest = hostinfo[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostinfo.partition(":")
    if not host:
        return f"no host in {shown!r}: expected {_REDIS_FORM}"
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        return f"port {port!r} is not a number from 1 to 65535 in {shown!r}"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"database {db!r} is not a number in {shown!r}: expected {_REDIS_FORM}"
    return None


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``, ``?password=`` too: the one
    redaction rule (:func:`pricectl.core.redaction.redact`), for URLs and any text naming one."""
    return redact(url)


def settings_to_dict(s: Any) -> Any:
    """Settings as plain YAML-able values: durations written back as ``15s``, URLs redacted."""
    if dataclasses.is_dataclass(s) and not isinstance(s, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(s):
            if f.name == "source":
                continue
            value = getattr(s, f.name)
            if is_duration(f):
                out[f.name] = format_duration(value)
            elif f.name.endswith("url") and isinstance(value, str):
                out[f.name] = redact_url(value)
            else:
                out[f.name] = settings_to_dict(value)
        return out
    if isinstance(s, tuple):
        return list(s)
    if isinstance(s, Mapping):
        return dict(s)
    return s


# --- other YAML documents, read by the same rules ------------------------------------------

_Document = typing.TypeVar("_Document")


def load_document(
    cls: type[_Document],
    text: str,
    origin: str,
    check: typing.Callable[[_Document, typing.Callable[[str, str], None]], None] | None = None,
) -> _Document:
    """Read the YAML ``text`` into the dataclass ``cls`` by the rules of the config file.

    Keys, types, durations (fields whose metadata has ``duration``) and nested
    dataclasses are checked as they are for the settings; ``check(value, problem)``
    adds cross-field problems as ``problem(dotted key, message)``. Every problem is in
    the one :class:`ConfigError`, each as ``origin:line: dotted.key: message``, an
    unknown key with the closest known one ("did you mean ...?").
    """
    raw, lines = _compose(text, origin)
    problems = _Problems(origin, lines)
    value: _Document = _build(cls, raw, "", problems)
    if check is not None:
        check(value, problems.add)
    if problems.items:
        n = len(problems.items)
        head = problems.items[0] if n == 1 else f"{origin}: {n} problems"
        raise ConfigError(head, problems.items)
    return value


__all__ += ["load_document"]

"""Settings: defaults equal the shipped file, durations, environment overrides, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pricectl.config import (
    ResilienceSettings,
    Settings,
    format_duration,
    load_settings,
    parse_duration,
    redact_url,
    settings_to_dict,
)
from pricectl.core import duration
from pricectl.core.backoff import BackoffPolicy
from pricectl.core.breaker import BreakerPolicy
from pricectl.core.fallback import FallbackPolicy
from pricectl.core.heartbeat import HeartbeatPolicy
from pricectl.core.lease import LeasePolicy
from pricectl.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "pricectl.yaml"


def test_defaults_equal_shipped_file() -> None:
    """The built-in defaults and config/pricectl.yaml say exactly the same thing."""
    assert load_settings(SHIPPED, env={}) == load_settings(None, env={})
    shipped = yaml.safe_load(SHIPPED.read_text())
    assert set(shipped) == set(settings_to_dict(Settings()))


def test_shipped_file_sets_every_key() -> None:
    """Every setting appears in the shipped file, so it documents them all."""

    def keys(d: object, prefix: str = "") -> set[str]:
        if isinstance(d, dict) and prefix != "quote_aliases":
            return set().union(*(keys(v, f"{prefix}.{k}" if prefix else k) for k, v in d.items()))
        return {prefix}

    shipped = yaml.safe_load(SHIPPED.read_text())
    assert keys(shipped) == keys(settings_to_dict(Settings()))


def test_config_reuses_core_durations() -> None:
    """parse_duration and format_duration are core's, so every reader spells them alike."""
    assert parse_duration is duration.parse_duration
    assert format_duration is duration.format_duration


def test_sections_are_the_core_policies(tmp_path: Path) -> None:
    """leader and each resilience section are built as core's policies, values as written."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "leader: {ttl: 30s, renew_deadline: 20s, retry: 5s}\n"
        "resilience:\n"
        "  backoff: {initial: 500ms, max: 30s, multiplier: 3.0, reset_after: 45s}\n"
        "  breaker: {failure_threshold: 7, cooldown: 12500ms}\n"
        "  heartbeat: {idle_timeout: 20s, stale_after: 12s}\n"
        "  fallback: {rest_poll_interval: 3s, rest_failures_before_cache: 4}\n"
    )
    s = load_settings(f, env={})
    assert s.leader == LeasePolicy(30.0, 20.0, 5.0)
    assert s.resilience.backoff == BackoffPolicy(0.5, 30.0, 3.0, 45.0)
    assert s.resilience.breaker == BreakerPolicy(7, 12.5)
    # The cascade's stale_after is the heartbeat's; its pace is the fallback section.
    assert s.resilience.heartbeat == HeartbeatPolicy(idle_timeout=20.0, stale_after=12.0)
    assert s.resilience.fallback == FallbackPolicy(3.0, 4)


def test_default_sections_are_the_default_policies() -> None:
    """With no file, every policy section is the core policy's own default."""
    s = Settings()
    assert s.leader == LeasePolicy()
    assert s.resilience == ResilienceSettings(
        BackoffPolicy(), BreakerPolicy(), HeartbeatPolicy(), FallbackPolicy()
    )


def test_environment_overrides() -> None:
    """Conventional variables and PRICECTL_<SECTION>__<KEY> override the file."""
    s = load_settings(
        SHIPPED,
        env={
            "BINANCE_WS_URL": "ws://127.0.0.1:9443",
            "BINANCE_REST_URL": "http://127.0.0.1:9443",
            "REDIS_URL": "redis://127.0.0.1:6390/0",
            "LOG_LEVEL": "DEBUG",
            "PRICE_STREAM_UPDATE_DEBOUNCE_MS": "100",
            "PRICECTL_RESILIENCE__BACKOFF__MAX": "30s",
            "PRICECTL_PAIRS": "[BTC/USD, ETH/USD]",
            "PRICECTL_SERVER__CORS_ORIGINS": "https://a.example,https://b.example",
        },
    )
    assert s.exchange.ws_url == "ws://127.0.0.1:9443"
    assert s.exchange.rest_url == "http://127.0.0.1:9443"
    assert s.bus.url == "redis://127.0.0.1:6390/0"
    assert s.logging.level == "debug"
    assert s.server.update_debounce_ms == 100
    assert s.resilience.backoff.max == 30.0
    assert s.pairs == ("BTC/USD", "ETH/USD")
    assert s.server.cors_origins == ("https://a.example", "https://b.example")


def test_environment_error_names_the_variable() -> None:
    """A bad value from the environment names the variable, not a file line."""
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PRICECTL_LEADER__TTL": "soon"})
    assert err.value.problems == [
        "environment PRICECTL_LEADER__TTL: leader.ttl: expected a duration such as "
        "250ms, 15s, 2m, got 'soon'"
    ]


def test_impossible_combination_names_file_line_and_key(tmp_path: Path) -> None:
    """renew_deadline >= ttl stops start-up with the file, line and both values."""
    f = tmp_path / "c.yaml"
    f.write_text("bus:\n  url: memory://\nleader:\n  ttl: 15s\n  renew_deadline: 20s\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:5: leader.renew_deadline: must be shorter than leader.ttl (15s), got 20s"
    ]


def test_every_broken_lease_ordering_is_reported(tmp_path: Path) -> None:
    """ttl > renew_deadline > retry: each broken step is its own problem with both values."""
    f = tmp_path / "c.yaml"
    f.write_text("leader:\n  ttl: 5s\n  renew_deadline: 10s\n  retry: 12s\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:3: leader.renew_deadline: must be shorter than leader.ttl (5s), got 10s",
        f"{f}:4: leader.retry: must be shorter than leader.renew_deadline (10s), got 12s",
    ]


def test_backoff_rules_name_the_key_and_the_values(tmp_path: Path) -> None:
    """initial > 0, max >= initial and multiplier >= 1, as written in the file or the env."""
    f = tmp_path / "c.yaml"
    f.write_text("resilience:\n  backoff:\n    initial: 0s\n    multiplier: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:3: resilience.backoff.initial: must be greater than 0",
        f"{f}:4: resilience.backoff.multiplier: must be >= 1, got 0.5",
    ]
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PRICECTL_RESILIENCE__BACKOFF__MAX": "100ms"})
    assert err.value.problems == [
        "environment PRICECTL_RESILIENCE__BACKOFF__MAX: resilience.backoff.max: "
        "must be at least resilience.backoff.initial (1s), got 100ms"
    ]


def test_rules_follow_the_type_errors_in_schema_order(tmp_path: Path) -> None:
    """Type errors come first in file order, then each section's rules in schema order."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "server:\n"
        "  port: eighty\n"
        "resilience:\n"
        "  fallback:\n"
        "    rest_poll_interval: 0s\n"
        "  heartbeat:\n"
        "    idle_timeout: 0s\n"
        "    stale_after: 0ms\n"
        "  breaker:\n"
        "    failure_threshold: 0\n"
        "    cooldown: soon\n"
        "leader:\n"
        "  ttl: 1s\n"
        "bus:\n"
        "  url: kafka://x\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:2: server.port: expected a whole number >= 0, got 'eighty'",
        f"{f}:11: resilience.breaker.cooldown: expected a duration such as 250ms, 15s, 2m, "
        "got 'soon'",
        f"{f}: leader.renew_deadline: must be shorter than leader.ttl (1s), got 10s",
        f"{f}:10: resilience.breaker.failure_threshold: must be at least 1",
        f"{f}:7: resilience.heartbeat.idle_timeout: must be greater than 0",
        f"{f}:8: resilience.heartbeat.stale_after: must be greater than 0",
        f"{f}:5: resilience.fallback.rest_poll_interval: must be greater than 0",
        f"{f}:15: bus.url: expected memory://, redis://, rediss://, unix://, "
        "redis+sentinel:// or redis+cluster://, got 'kafka://x'",
    ]


def test_wrong_types_and_unknown_sections(tmp_path: Path) -> None:
    """Wrong types, bad choices and unknown sections are each reported with their key."""
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: eighty\n  workers: -1\nexchange:\n  stream: depth\nbogus: {}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    text = "\n".join(err.value.problems)
    assert f"{f}:2: server.port: expected a whole number >= 0, got 'eighty'" in text
    assert f"{f}:3: server.workers: expected a whole number >= 0, got -1" in text
    assert f"{f}:5: exchange.stream: expected one of ticker, miniTicker" in text
    assert f"{f}:6: bogus: unknown key" in text


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line."""
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  port: [1,\n")
    with pytest.raises(ConfigError, match=rf"{f}:\d+: not valid YAML"):
        load_settings(f, env={})


def test_bad_bus_url_and_pairs(tmp_path: Path) -> None:
    """A bus URL of an unknown scheme and malformed or duplicate pairs are refused."""
    f = tmp_path / "c.yaml"
    f.write_text("bus:\n  url: kafka://x\npairs: [BTC/USD, btc/usd, BTCUSD]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    text = "\n".join(err.value.problems)
    assert (
        "bus.url: expected memory://, redis://, rediss://, unix://, redis+sentinel:// or "
        "redis+cluster://" in text
    )
    assert "pairs[1]: duplicate pair BTC/USD" in text
    assert "pairs[2]: malformed pair 'BTCUSD'" in text


def test_sentinel_and_cluster_urls(tmp_path: Path) -> None:
    """Sentinel and Cluster URLs are taken; a wrong one is refused at its file:line with
    a sentence that names the problem, the password redacted."""
    f = tmp_path / "c.yaml"
    good = "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/1"
    f.write_text(f"bus:\n  url: {good}\n")
    assert load_settings(f, env={}).bus.url == good
    f.write_text("bus:\n  url: redis+cluster://10.0.0.1:7000,10.0.0.2:7000\n")
    assert load_settings(f, env={}).bus.url.startswith("redis+cluster://")
    f.write_text("pairs: [BTC/USD]\nbus:\n  url: redis+sentinel://:pw@h1:26379,h2:26379\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:3: bus.url: no service name in 'redis+sentinel://:***@h1:26379,h2:26379': "
        "expected redis+sentinel://[[user]:password@]host1:port1,host2:port2,.../service[/db] "
        "(the name given to `sentinel monitor`)"
    ]


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after validation."""
    s = load_settings(None, env={})
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.quote_aliases["EUR"] = "EUR"  # type: ignore[index]


def test_redact_url() -> None:
    """Passwords in URLs are replaced by ***; URLs without one are unchanged."""
    assert redact_url("redis://u:pw@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("memory://") == "memory://"


def test_streams_per_connection_is_at_most_binances_1024(tmp_path: Path) -> None:
    """exchange.streams_per_connection above Binance's cap is refused, naming file and line."""
    f = tmp_path / "c.yaml"
    f.write_text("exchange:\n  streams_per_connection: 2000\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}:2: exchange.streams_per_connection: must be 1 to 1024 (Binance's limit per "
        "connection), got 2000"
    ]
    f.write_text("exchange:\n  streams_per_connection: 1024\n")
    assert load_settings(f, env={}).exchange.streams_per_connection == 1024


def test_idle_grace_and_universe_refresh_have_floors() -> None:
    """An idle_grace below 1s (a renewal round) or a universe_refresh below a minute (REST
    weight) is refused, naming the variable and the key; the floors themselves pass."""
    with pytest.raises(ConfigError) as err:
        load_settings(
            None,
            env={
                "PRICECTL_EXCHANGE__IDLE_GRACE": "10ms",
                "PRICECTL_EXCHANGE__UNIVERSE_REFRESH": "0s",
            },
        )
    problems = err.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(
        "environment PRICECTL_EXCHANGE__IDLE_GRACE: exchange.idle_grace: must be at least 1s, "
        "got 10ms"
    )
    assert problems[1].startswith(
        "environment PRICECTL_EXCHANGE__UNIVERSE_REFRESH: exchange.universe_refresh: must be "
        "at least 1m, got 0ms"
    )
    s = load_settings(
        None,
        env={"PRICECTL_EXCHANGE__IDLE_GRACE": "1s", "PRICECTL_EXCHANGE__UNIVERSE_REFRESH": "1m"},
    )
    assert s.exchange.idle_grace == 1.0 and s.exchange.universe_refresh == 60.0


def test_string_settings_from_the_environment_are_taken_literally() -> None:
    """PRICECTL_BUS__PREFIX=staging: (a YAML mapping if parsed) is the prefix "staging:";
    string-like values that YAML would turn into other types stay strings too; typed
    settings are still parsed."""
    s = load_settings(
        None,
        env={
            "PRICECTL_BUS__PREFIX": "staging:",
            "PRICECTL_SERVER__HOST": "0.0.0.0",
            "PRICECTL_LOGGING__LEVEL": "warning",
            "PRICECTL_SERVER__PORT": "8123",
            "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
            "PRICECTL_PAIRS": "[BTC/USD, ETH/USD]",
        },
    )
    assert s.bus.prefix == "staging:"
    assert s.server.host == "0.0.0.0"
    assert s.logging.level == "warning"
    assert s.server.port == 8123 and s.exchange.check_symbols is False
    assert s.pairs == ("BTC/USD", "ETH/USD")
    assert load_settings(None, env={"PRICECTL_BUS__PREFIX": '"staging:"'}).bus.prefix == "staging:"
    assert load_settings(None, env={"PRICECTL_BUS__PREFIX": "true"}).bus.prefix == "true"

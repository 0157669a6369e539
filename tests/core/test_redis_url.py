"""What a Redis URL names: one server, a Sentinel service, a Redis Cluster (pure)."""

from __future__ import annotations

import pytest

from pricectl.core.redis_url import RedisTarget, parse_redis_url


def test_a_sentinel_url_lists_the_sentinels_and_names_the_service() -> None:
    target = parse_redis_url(
        "rediss+sentinel://app:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:26379/my%20svc/2"
        "?sentinel_password=s3&sentinel_username=watch"
    )
    assert target == RedisTarget(
        "sentinel",
        target.url,
        tls=True,
        hosts=(("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26379)),
        service="my svc",
        db=2,
        username="app",
        password="p@ss",
        sentinel_username="watch",
        sentinel_password="s3",
    )
    plain = parse_redis_url("redis+sentinel://h1:1,h2:2/mymaster")
    assert plain.kind == "sentinel" and not plain.tls and plain.db == 0
    assert plain.password is None and plain.username is None


def test_a_tls_sentinel_url_carries_the_ca_and_client_certificate() -> None:
    target = parse_redis_url(
        "rediss+sentinel://h1,h2/mymaster?ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/me.pem&ssl_keyfile=/etc/me.key&sentinel_password=s3"
    )
    assert target.tls and target.sentinel_password == "s3"
    assert target.tls_options == (
        ("ssl_ca_certs", "/etc/ca.pem"),
        ("ssl_certfile", "/etc/me.pem"),
        ("ssl_keyfile", "/etc/me.key"),
    )


def test_a_cluster_url_lists_seed_nodes() -> None:
    target = parse_redis_url("redis+cluster://:pw@h1:7000,h2")
    assert target.kind == "cluster" and target.hosts == (("h1", 7000), ("h2", 6379))
    assert target.password == "pw" and target.db == 0


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h/1", "unix:///s.sock", "x"])
def test_plain_urls_are_left_to_redis_py(url: str) -> None:
    assert parse_redis_url(url).kind == "standalone"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379,h2:26379", "no service name in"),
        ("redis+sentinel://h1:26379/", "no service name in"),
        ("redis+sentinel:///mymaster", "no host in"),
        ("redis+sentinel://h1:x/mymaster", "port 'x' is not a number from 1 to 65535"),
        ("redis+sentinel://h1:70000/mymaster", "port '70000' is not a number"),
        ("redis+sentinel://h1,,h2/mymaster", "an empty host"),
        ("redis+sentinel://h1/mymaster/zero", "database 'zero' is not a number"),
        ("redis+sentinel://h1/mymaster/0/extra", "too many path parts"),
        ("redis+sentinel://h1/mymaster?db=1", "unknown option 'db'"),
        ("rediss+sentinel://h1/mymaster?ssl_ca_cert=/ca", "unknown option 'ssl_ca_cert'"),
        ("redis+sentinel://h1/mymaster?ssl_ca_certs=/ca", "is a TLS option: use rediss.sentinel"),
        ("redis+cluster://h1:7000/3", "a Redis Cluster has only database 0"),
        ("redis+cluster://h1:7000?password=x", "unknown option 'password'"),
    ],
)
def test_bad_urls_name_the_problem(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)


def test_the_error_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as err:
        parse_redis_url("redis+sentinel://:hunter2@h1:x/mymaster")
    assert "hunter2" not in str(err.value) and ":***@" in str(err.value)

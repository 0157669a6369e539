"""Bad input, as a newcomer types it: one line naming the setting or option, exit 2 for
usage or configuration, 1 for a runtime failure, never a traceback or a stray warning.

Each case runs ``pricectl`` as a real process (``python -W default``, so a coroutine that
is never awaited would print its RuntimeWarning), against real sockets and a real Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pricectl.loadtest.spawn import free_port
from tests.redis_server import RedisServer
from tests.waiting import wait_for

PASSWORD = "s3cret-for-tests"


@dataclass(frozen=True)
class Case:
    """``pricectl ARGS`` (with ``env``) must exit ``code`` with one error line holding
    every one of ``says``."""

    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """What the cases refer to: files, a taken port, Redis with and without a password."""

    tmp: Path
    taken_port: int
    plain_redis: str
    auth_redis: str
    sentinel_port: int

    def fill(self, text: str) -> str:
        return text.format(
            tmp=self.tmp,
            taken=self.taken_port,
            plain=self.plain_redis,
            plain_tls=self.plain_redis.replace("redis://", "rediss://"),
            auth=self.auth_redis,
            auth_port=self.auth_redis.rsplit(":", 1)[1].split("/")[0],
            plain_port=self.plain_redis.rsplit(":", 1)[1].split("/")[0],
            free=free_port(),
            sentinel=self.sentinel_port,
        )


CASES: dict[str, Case] = {
    "redis url port not a number": Case(
        ("config", "show"),
        2,
        ("environment REDIS_URL: bus.url:", "port 'abc' is not a number"),
        {"REDIS_URL": "redis://127.0.0.1:abc/0"},
    ),
    "redis url port not a number at serve": Case(
        ("serve", "--port", "0"),
        2,
        ("environment REDIS_URL: bus.url:", "port 'abc'"),
        {"REDIS_URL": "redis://127.0.0.1:abc/0"},
    ),
    "leader retry 0s": Case(
        ("--config", "{tmp}/retry0.yaml", "config", "check"),
        2,
        ("retry0.yaml:2: leader.retry: must be greater than 0",),
    ),
    "leader retry 0s at ingest": Case(
        ("--config", "{tmp}/retry0.yaml", "ingest"),
        2,
        ("retry0.yaml:2: leader.retry: must be greater than 0",),
    ),
    "binary config file": Case(
        ("--config", "{tmp}/binary.yaml", "config", "check"),
        2,
        ("binary.yaml: not a YAML text file", "not UTF-8"),
    ),
    "serve port -1": Case(("serve", "--port", "-1"), 2, ("'--port'", "0<=x<=65535")),
    "serve port 99999": Case(("serve", "--port", "99999"), 2, ("'--port'", "0<=x<=65535")),
    "server.port 99999 in the environment": Case(
        ("serve",),
        2,
        ("environment PRICECTL_SERVER__PORT: server.port: must be 0 to 65535",),
        {"PRICECTL_SERVER__PORT": "99999"},
    ),
    "serve port in use": Case(
        ("serve", "--port", "{taken}"),
        1,
        ("cannot listen on 127.0.0.1:{taken}", "already in use", "--port"),
    ),
    "serve bad host": Case(
        ("serve", "--host", "no-such-host.invalid", "--port", "0"),
        2,
        ("cannot listen on no-such-host.invalid:0", "does not resolve", "--host"),
    ),
    "health redis url not redis": Case(
        ("health", "--redis", "http://127.0.0.1:{free}/"),
        2,
        ("--redis: expected redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://",),
    ),
    "tail redis url port not a number": Case(
        ("tail", "BTC/USD", "--from", "redis", "--redis", "redis://127.0.0.1:x/0"),
        2,
        ("--redis: port 'x' is not a number",),
    ),
    "health timeout abc": Case(
        ("health", "--timeout", "abc"), 2, ("'--timeout'", "expected a duration", "'abc'")
    ),
    "error from a PRICECTL_ variable names it": Case(
        ("config", "check"),
        2,
        ("environment PRICECTL_LEADER__TTL: leader.ttl:",),
        {"PRICECTL_LEADER__TTL": "ten"},
    ),
    "rediss against a plain redis": Case(
        ("health", "--redis", "{plain_tls}"),
        2,
        ("no TLS answer", "use redis:// instead of rediss://"),
    ),
    "wrong password": Case(
        ("health", "--redis", "redis://:wrong@127.0.0.1:{auth_port}/0"),
        2,
        ("authentication failed", "check the user and password"),
    ),
    "no password for a redis that wants one": Case(
        ("health", "--redis", "redis://127.0.0.1:{auth_port}/0"),
        2,
        ("authentication failed", "requires a password", "redis://:PASSWORD@host"),
    ),
    "wrong password in tail": Case(
        ("tail", "BTC/USD", "--from", "redis", "--redis", "redis://:wrong@127.0.0.1:{auth_port}/0"),
        1,
        ("authentication failed",),
    ),
    "a sentinel port given as a plain redis url": Case(
        ("health", "--redis", "redis://127.0.0.1:{sentinel}/0"),
        2,
        ("this is not a Redis server, perhaps a sentinel port", "redis+sentinel://"),
    ),
    "a sentinel url naming no service the sentinels know": Case(
        ("health", "--redis", "redis+sentinel://127.0.0.1:{sentinel}/nosuch"),
        2,
        ("name no master for 'nosuch'", "sentinel monitor"),
    ),
    "a sentinel url without a service": Case(
        ("health", "--redis", "redis+sentinel://127.0.0.1:{sentinel}"),
        2,
        ("--redis: no service name in", "redis+sentinel://"),
    ),
    "a sentinel service in the query": Case(
        ("config", "check"),
        2,
        ("bus.url:", "named in the URL's path, not in its query"),
        {"REDIS_URL": "redis://127.0.0.1:26379/0?sentinel=mymaster"},
    ),
    "several hosts in a plain url": Case(
        ("config", "check"),
        2,
        ("bus.url:", "several hosts in", "redis+sentinel://"),
        {"REDIS_URL": "redis://h1:26379,h2:26379/0"},
    ),
    "a sentinel port that is not a number": Case(
        ("config", "check"),
        2,
        ("bus.url:", "port 'x' is not a number"),
        {"REDIS_URL": "redis+sentinel://:pw@h1:26379,h2:x/mymaster/0"},
    ),
    "a data node's port as a sentinel": Case(
        ("health", "--redis", "redis+sentinel://127.0.0.1:{plain_port}/mymaster/0"),
        2,
        ("a Redis data node, not a sentinel", "sentinels' ports"),
    ),
    "a password-protected data node's port as a sentinel": Case(
        ("health", "--redis", "redis+sentinel://:pw@127.0.0.1:{auth_port}/mymaster/0"),
        2,
        ("authentication failed at the sentinels", "a data node's port"),
    ),
    "every sentinel down": Case(
        ("health", "--redis", "redis+sentinel://:pw@127.0.0.1:{free},127.0.0.1:{taken}/mymaster/0"),
        2,
        ("no sentinel reachable at 127.0.0.1:", "are the sentinels running", ":***@"),
    ),
    "serve not running": Case(
        ("health", "--url", "http://127.0.0.1:{free}"),
        2,
        ("cannot reach http://127.0.0.1:", "connection refused", "is `pricectl serve` running"),
    ),
    "redis not running": Case(
        ("health", "--redis", "redis://127.0.0.1:{free}/0"),
        2,
        ("nothing listens at redis://127.0.0.1:", "is redis-server running there"),
    ),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Config files, a port someone else listens on, and two real Redis servers."""
    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "retry0.yaml").write_text("leader:\n  retry: 0s\n")
    (tmp / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    plain = RedisServer(tmp_path_factory.mktemp("redis-plain"))
    auth = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    plain.start()
    auth.start()
    # A sentinel that monitors nothing: a port that answers, but not as a data node.
    sentinel_port = free_port()
    conf = tmp / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp}\n")
    exe = shutil.which("redis-sentinel")
    assert exe is not None, "redis-sentinel is not installed: run `make test`, which installs it"
    sentinel = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(sentinel_port), 10, "the sentinel")
        yield World(tmp, taken.getsockname()[1], plain.url, auth.url, sentinel_port)
    finally:
        sentinel.kill()
        sentinel.wait(timeout=10)
        plain.kill()
        auth.kill()
        taken.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _run(world: World, case: Case) -> subprocess.CompletedProcess[str]:
    args = [world.fill(a) for a in case.args]
    env = {k: world.fill(v) for k, v in case.env.items()}
    return subprocess.run(
        [sys.executable, "-W", "default", "-m", "pricectl.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_naming_it(world: World, name: str) -> None:
    """Each bad input: its exit code, one error line naming the setting or option, no
    traceback, no 'coroutine ... was never awaited'."""
    case = CASES[name]
    result = _run(world, case)
    err = result.stderr
    assert result.returncode == case.code, (result.returncode, err)
    assert "Traceback" not in err and "RuntimeWarning" not in err and "never awaited" not in err
    problem_lines = [
        line for line in err.splitlines() if line.startswith(("error:", "Error:", "down:"))
    ]
    assert len(problem_lines) == 1, err
    line = problem_lines[0]
    for needle in case.says:
        assert world.fill(needle) in line, (needle, line)
    # one prefix, said once: "redis unreachable at X: redis unreachable at X: ..." no more
    head = line.split(": ", 2)
    assert len(head) < 3 or head[1] not in head[2], line


@pytest.mark.parametrize(
    "name", ["redis url port not a number", "leader retry 0s", "binary config file"]
)
def test_config_check_refuses_what_a_command_would(world: World, name: str) -> None:
    """config check runs the commands' own validation: what fails at start fails it too."""
    case = CASES[name]
    args = tuple(a for a in case.args if a not in ("show", "check", "ingest", "config"))
    check = _run(world, Case((*args, "config", "check"), case.code, case.says, case.env))
    assert check.returncode == 2
    assert all(world.fill(n) in check.stderr for n in case.says), check.stderr


def test_empty_prefix_variable_is_an_empty_prefix(world: World) -> None:
    """PRICECTL_BUS__PREFIX= (empty) sets the prefix to '' instead of being refused."""
    result = _run(world, Case(("config", "show"), 0, (), {"PRICECTL_BUS__PREFIX": ""}))
    assert result.returncode == 0, result.stderr
    assert "prefix: ''" in result.stdout


def test_every_sentinel_down_is_one_short_line(world: World) -> None:
    """No sentinel answers: one line naming the sentinels, no redis-py object reprs."""
    case = CASES["every sentinel down"]
    err = _run(world, case).stderr
    assert "BoundedRedis(" not in err and "ConnectionPool" not in err, err
    assert len(err.strip().splitlines()[-1]) < 400, err

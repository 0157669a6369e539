"""``--spawn``: start a simulator and a serve (and, with Redis, ingest processes) to test.

Everything runs as real ``pricectl`` subprocesses on free loopback ports, configured
only through the environment (``PRICECTL_EXCHANGE__STREAM=bookTicker`` and the
simulator's ``--trade-rate``, so every client of one pair gets ``update_rate`` events a
second), and is stopped with SIGTERM (then SIGKILL) when the run ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pricectl.errors import PricectlError

__all__ = ["SpawnError", "Spawned", "free_port", "spawned_system"]


class SpawnError(PricectlError):
    """A spawned process did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a spawned pricectl process: this one's without any pricectl
    setting from the caller's shell (``PRICECTL_*`` and config.ENV_ALIASES, so a stray
    REDIS_URL cannot redirect a spawned serve's bus), plus ``settings``."""
    from pricectl.config import ENV_ALIASES

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PRICECTL_") and k not in ENV_ALIASES
    }
    env.update(settings)
    return env


@dataclass
class Spawned:
    """The processes of a spawned system and where to reach them."""

    serve_port: int
    serve: subprocess.Popen[bytes]
    simulator: subprocess.Popen[bytes]
    ingest: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    @property
    def serve_pid(self) -> int:
        """The serve process to sample for CPU and memory."""
        return self.serve.pid

    def kill_leader(self, redis_url: str) -> int | None:
        """SIGKILL the ingest process holding the lease (failover); returns its pid, or
        None (and kills nothing) when the lease names none of them."""
        alive = [p for p in self.ingest if p.poll() is None]
        leader = _leader_pid(redis_url, [p.pid for p in alive])
        if leader is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leader, signal.SIGKILL)
        return leader


def _leader_pid(redis_url: str, pids: list[int]) -> int | None:
    """The pid in the lease token (``host-pid-random``, bus.leader.make_token), when it is
    one of ``pids``; None when no lease is held or it is not one of ours."""
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=1.0)
        token = client.get("pricectl:leader")
        client.close()
    except Exception:
        return None
    if token is None:
        return None
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else str(token)
    parts = text.rsplit("-", 2)  # the host name may hold dashes; pid and random do not
    if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in pids:
        return int(parts[1])
    return None


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SpawnError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise SpawnError(f"{what} did not answer {url} within {timeout:.0f}s ({last})")


def _stop(proc: subprocess.Popen[bytes], grace: float = 8.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def spawned_system(
    pairs: list[str],
    update_rate: float,
    *,
    redis_url: str | None = None,
    ingest_processes: int = 2,
    serve_workers: int = 1,
    startup_timeout: float = 20.0,
    lease: Mapping[str, float] | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Spawned]:
    """Run simulator + serve (+ ingest with Redis) until the ``with`` block ends.

    ``lease`` (``ttl``, ``renew_deadline``, ``retry`` in seconds) overrides the ingest
    processes' leader lease; ``settings`` adds environment settings (``PRICECTL_...``)
    to every process's.
    """
    exe = [sys.executable, "-m", "pricectl.cli"]
    sim_port = free_port()
    serve_port = free_port()
    logdir = tempfile.mkdtemp(prefix="pricectl-loadtest-")
    env = child_env(
        {
            "PRICECTL_PAIRS": ",".join(pairs),
            "PRICECTL_EXCHANGE__STREAM": "bookTicker",
            "PRICECTL_EXCHANGE__CHECK_SYMBOLS": "false",
            "BINANCE_WS_URL": f"ws://127.0.0.1:{sim_port}",
            "BINANCE_REST_URL": f"http://127.0.0.1:{sim_port}",
            "PRICECTL_SERVER__MAX_CONNECTIONS": "20000",
            "LOG_LEVEL": "warning",
            **(settings or {}),
        }
    )
    if redis_url:
        env["PRICECTL_BUS__URL"] = redis_url
        env["REDIS_URL"] = redis_url
    for key, seconds in (lease or {}).items():
        env[f"PRICECTL_LEADER__{key.upper()}"] = f"{seconds:g}s"
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        path = os.path.join(logdir, f"{name}.log")
        with open(path, "wb") as log:
            p = subprocess.Popen(
                exe + args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(p)
        return p

    try:
        sim = start(
            "simulate",
            [
                "simulate",
                "--port",
                str(sim_port),
                "--pairs",
                ",".join(pairs),
                "--trade-rate",
                f"{update_rate:g}",
            ],
        )
        _wait_http(f"http://127.0.0.1:{sim_port}/api/v3/ping", sim, "simulator", startup_timeout)
        ingest = [
            start(f"ingest-{i}", ["ingest"]) for i in range(ingest_processes if redis_url else 0)
        ]
        serve_args = ["serve", "--port", str(serve_port)]
        if serve_workers > 1:
            serve_args += ["--workers", str(serve_workers)]
        serve = start("serve", serve_args)
        _wait_http(
            f"http://127.0.0.1:{serve_port}/api/market-data/health",
            serve,
            "serve",
            startup_timeout,
        )
        system = Spawned(serve_port, serve, sim, ingest, [logdir])
        _wait_prices(serve_port, pairs, serve, startup_timeout)
        yield system
    finally:
        for p in reversed(procs):
            _stop(p)


_WAIT_BATCH = 50


def _wait_prices(
    port: int, pairs: list[str], proc: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until serve has a price for every pair (the relay is live)."""
    import json

    deadline = time.monotonic() + timeout
    body: object = None
    waiting = list(pairs)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SpawnError(f"serve exited with status {proc.returncode} while starting")
        # In batches: a request names at most server.max_pairs_per_connection (50) pairs.
        batch = waiting[:_WAIT_BATCH]
        url = f"http://127.0.0.1:{port}/api/market-data/prices?pairs={','.join(batch)}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                body = json.loads(resp.read())
            text = json.dumps(body)
            if all(f'"{p}"' in text for p in batch) and '"price"' in text:
                del waiting[: len(batch)]
                if not waiting:
                    return
                continue
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    missing = ", ".join(waiting[:_WAIT_BATCH]) + (" ..." if len(waiting) > _WAIT_BATCH else "")
    raise SpawnError(f"serve had no prices for {missing} within {timeout:.0f}s: {body}")

"""A real ``redis-server`` process on a free loopback port, which tests can stop and restart.

Failover and outage tests need to kill Redis and bring it back *on the same port*,
so the port is chosen once and kept for the life of the object.

This is the one place that starts a redis-server: the ``redis_server`` fixture uses
:class:`RedisServer`, and the benchmarks, which must never touch a Redis someone else
uses, take a throwaway one from :func:`private_redis`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pricectl.loadtest.spawn import free_port

__all__ = ["RedisServer", "private_redis"]


class RedisServer:
    """One redis-server in ``folder``; ``url`` stays the same across restarts.

    With ``password`` it runs with ``--requirepass`` and ``url`` carries the password.
    """

    def __init__(self, folder: Path, port: int | None = None, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.exe = exe
        self.folder = folder
        self.port = port or free_port()
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts a PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.folder / 'redis.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(b"AUTH %s\r\n" % self.password.encode())
                    if not s.recv(16).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) and wait."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Kill and start again on the same port."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a hung host)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        """FLUSHALL: every key gone at once (the lease, the epoch, the snapshot)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as s:
            s.sendall(b"FLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server (no persistence) in a temporary folder; yields its URL and
    stops it (SIGTERM) when the block ends."""
    with tempfile.TemporaryDirectory(prefix="pricectl-redis-") as folder:
        server = RedisServer(Path(folder))
        try:
            server.start()
            yield server.url
        finally:
            server.stop()

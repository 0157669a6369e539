"""A real Sentinel deployment on free loopback ports: 1 primary, 1 replica, 3 sentinels.

Quorum 2, ``down-after-milliseconds`` 1000 and a short ``failover-timeout``, so a killed
primary is replaced in a few seconds. Every wait is on a condition with a deadline (the
sentinels' own view, asked with SENTINEL commands), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pricectl.loadtest.spawn import free_port
from tests.waiting import UNIT, wait_for

__all__ = ["SERVICE", "SentinelDeployment", "sentinel_command", "sentinel_deployment"]

#: The Sentinel service (master) name the tests use.
SERVICE = "mymaster"


def _resp(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )


def _command(port: int, *args: str, timeout: float = 2.0, password: str | None = None) -> bytes:
    """One RESP command to 127.0.0.1:port; the raw reply (enough for the checks here)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if password:
            s.sendall(_resp("AUTH", password))
            if not s.recv(64).startswith(b"+OK"):
                return b"-NOAUTH"
        s.sendall(_resp(*args))
        s.settimeout(timeout)
        chunks = [s.recv(65536)]
        # Enough for the small replies asked for here; a bulk reply may come in pieces.
        s.settimeout(0.05)
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def sentinel_command(port: int, *args: str) -> bytes:
    """One command to the sentinel on ``port`` (CONFIG SET, ...); the raw reply."""
    return _command(port, *args)


def _ping(port: int, password: str | None = None) -> bool:
    try:
        return _command(port, "PING", timeout=0.5, password=password).startswith(b"+PONG")
    except OSError:
        return False


class SentinelDeployment:
    """The processes of one deployment, started in ``folder``; ``url`` is the
    ``redis+sentinel://`` URL of the service."""

    def __init__(self, folder: Path, sentinels: int = 3, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        sentinel_exe = shutil.which("redis-sentinel")
        if exe is None or sentinel_exe is None:
            raise RuntimeError(
                "redis-server and redis-sentinel are needed: run `make test`, which installs them"
            )
        self.exe = exe
        self.sentinel_exe = sentinel_exe
        self.folder = folder
        #: Data ports: the first starts as the primary, the second as its replica.
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        #: With ``password``, the data nodes require it (and replicate with it).
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    # --- processes -------------------------------------------------------------

    def _spawn(self, port: int, args: list[str], exe: str) -> None:
        with open(self.folder / f"redis-{port}.log", "ab") as log:
            self.procs[port] = subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT)

    def start_data(self, port: int, replica_of: int | None = None) -> None:
        """Start (or restart) the data node on ``port``, a replica of ``replica_of``."""
        folder = self.folder / f"data-{port}"
        folder.mkdir(exist_ok=True)
        args = [
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--daemonize", "no",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args, self.exe)
        deadline = time.monotonic() + 10 * UNIT
        while not _ping(port, self.password):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start: see {self.folder}")
            time.sleep(0.02)

    def start(self) -> None:
        """Primary, replica, then the sentinels; returns once all agree on the layout."""
        primary, replica = self.data_ports
        self.start_data(primary)
        self.start_data(replica, replica_of=primary)
        wait_for(lambda: self.link_up(replica), 10, "the replica in sync")
        for port in self.sentinel_ports:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                + (f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else "")
                + f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._spawn(port, [str(conf)], self.sentinel_exe)
        wait_for(self.settled, 20, "every sentinel to know the replica and the other sentinels")

    def stop(self) -> None:
        """Kill every process (SIGKILL) and wait for it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def kill(self, port: int) -> None:
        """SIGKILL the data node on ``port``, as a crash would."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(timeout=10)

    # --- what the deployment says ----------------------------------------------------

    def info(self, port: int, section: str = "replication") -> dict[str, str]:
        try:
            raw = _command(port, "INFO", section, password=self.password).decode(errors="replace")
        except OSError:
            return {}
        out: dict[str, str] = {}
        for line in raw.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def role(self, port: int) -> str | None:
        """``master`` or ``slave`` as the node on ``port`` says, None if it does not answer."""
        return self.info(port).get("role")

    def link_up(self, port: int) -> bool:
        return self.info(port).get("master_link_status") == "up"

    def master_port(self, sentinel: int | None = None) -> int | None:
        """The primary's port as the sentinel on ``sentinel`` (default: the first) names it."""
        port = self.sentinel_ports[0] if sentinel is None else sentinel
        try:
            raw = _command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        except OSError:
            return None
        parts = raw.split(b"\r\n")
        # *2 $9 127.0.0.1 $4 6379
        return int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None

    def _master_field(self, sentinel: int, name: str) -> str | None:
        try:
            raw = _command(sentinel, "SENTINEL", "MASTER", SERVICE).split(b"\r\n")
        except OSError:
            return None
        values = [raw[i].decode() for i in range(2, len(raw), 2)]
        fields = dict(zip(values[0::2], values[1::2], strict=False))
        return fields.get(name)

    def settled(self) -> bool:
        """Every sentinel names the same primary, knows 1 replica and the other sentinels."""
        primary = self.master_port()
        if primary is None:
            return False
        others = str(len(self.sentinel_ports) - 1)
        for port in self.sentinel_ports:
            if self.master_port(port) != primary:
                return False
            if self._master_field(port, "num-slaves") != "1":
                return False
            if self._master_field(port, "num-other-sentinels") != others:
                return False
            if self._master_field(port, "flags") != "master":
                return False
        replica = next(p for p in self.data_ports if p != primary)
        return self.role(replica) == "slave" and self.link_up(replica)

    def whole(self) -> bool:
        """Every sentinel names the same master, which says it is one, and sees the other
        data node as a healthy replica (not down), in sync with it: ready for a failover."""
        import redis

        primary = self.master_port()
        if primary is None or self.role(primary) != "master":
            return False
        replica = next((p for p in self.data_ports if p != primary), None)
        if replica is None or self.role(replica) != "slave" or not self.link_up(replica):
            return False
        for port in self.sentinel_ports:
            if self.master_port(port) != primary:
                return False
            try:
                with redis.Redis(port=port, socket_timeout=1.0) as client:
                    replicas = client.sentinel_slaves(SERVICE)
            except redis.RedisError:
                return False
            mine = [r for r in replicas if int(r["port"]) == replica]
            if not mine or mine[0]["is_sdown"] or mine[0]["is_odown"]:
                return False
        return True

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote the replica now, no agreement needed."""
        reply = _command(self.sentinel_ports[0], "SENTINEL", "FAILOVER", SERVICE)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"SENTINEL FAILOVER answered {reply!r}")

    def promoted(self, old: int) -> int | None:
        """The new primary's port once every sentinel names one other than ``old`` and it
        says it is a master."""
        ports = {self.master_port(p) for p in self.sentinel_ports}
        if len(ports) != 1:
            return None
        (port,) = ports
        if port is None or port == old or self.role(port) != "master":
            return None
        return port


@contextlib.contextmanager
def sentinel_deployment(folder: Path, password: str | None = None) -> Iterator[SentinelDeployment]:
    """A started deployment (its data nodes requiring ``password`` if given); every
    process killed when the block ends."""
    deployment = SentinelDeployment(folder, password=password)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()

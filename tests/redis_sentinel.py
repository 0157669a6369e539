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
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pricectl.loadtest.spawn import free_port
from tests.waiting import UNIT, wait_for

__all__ = [
    "SERVICE",
    "SentinelDeployment",
    "TlsFiles",
    "make_tls_files",
    "sentinel_command",
    "sentinel_deployment",
]

#: The Sentinel service (master) name the tests use.
SERVICE = "mymaster"


def _resp(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )


class TlsFiles:
    """A test CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    def __init__(self, folder: Path) -> None:
        self.ca = folder / "ca.crt"
        self.cert = folder / "server.crt"
        self.key = folder / "server.key"

    def context(self) -> ssl.SSLContext:
        """A client context trusting the CA."""
        return ssl.create_default_context(cafile=str(self.ca))

    def server_args(self) -> list[str]:
        """redis-server / redis-sentinel options for TLS only, clients not checked."""
        return [
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip


def make_tls_files(folder: Path) -> TlsFiles:
    """Make a CA and a server certificate (subjectAltName IP:127.0.0.1) with ``openssl``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder)
    ca_key = folder / "ca.key"
    csr = folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
         "-out", str(files.ca), "-days", "1", "-subj", "/CN=pricectl test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(files.key),
         "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(files.cert), "-days", "1", "-extfile", str(ext)],
    ):  # fmt: skip
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return files


def _command(
    port: int,
    *args: str,
    timeout: float = 2.0,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> bytes:
    """One RESP command to 127.0.0.1:port (over TLS with ``tls``); the raw reply (enough
    for the checks here)."""
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        if tls is not None:
            s = stack.enter_context(tls.wrap_socket(s, server_hostname="127.0.0.1"))
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


def _ping(port: int, password: str | None = None, tls: ssl.SSLContext | None = None) -> bool:
    try:
        return _command(port, "PING", timeout=0.5, password=password, tls=tls).startswith(b"+PONG")
    except OSError:
        return False


class SentinelDeployment:
    """The processes of one deployment, started in ``folder``; ``url`` is the
    ``redis+sentinel://`` URL of the service (``rediss+sentinel://`` with ``tls``: every
    process then listens on TLS only and replicates over it)."""

    def __init__(
        self,
        folder: Path,
        sentinels: int = 3,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
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
        self.tls = tls
        self._context = tls.context() if tls else None
        scheme = "rediss+sentinel" if tls else "redis+sentinel"
        query = f"?ssl_ca_certs={tls.ca}" if tls else ""
        self.url = f"{scheme}://{auth}{hosts}/{SERVICE}/0{query}"

    def _cmd(self, port: int, *args: str, password: str | None = None) -> bytes:
        return _command(port, *args, password=password, tls=self._context)

    # --- processes -------------------------------------------------------------

    def _spawn(self, port: int, args: list[str], exe: str) -> None:
        with open(self.folder / f"redis-{port}.log", "ab") as log:
            self.procs[port] = subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT)

    def start_data(self, port: int, replica_of: int | None = None) -> None:
        """Start (or restart) the data node on ``port``, a replica of ``replica_of``."""
        folder = self.folder / f"data-{port}"
        folder.mkdir(exist_ok=True)
        listen = ["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]
        args = [
            *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(folder), "--daemonize", "no",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.tls:
            args += self.tls.server_args()
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args, self.exe)
        deadline = time.monotonic() + 10 * UNIT
        while not _ping(port, self.password, self._context):
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
            tls = ""
            if self.tls:
                opts = self.tls.server_args()
                tls = "port 0\n" + "".join(
                    f"{opts[i][2:]} {opts[i + 1]}\n" for i in range(0, len(opts), 2)
                )
            conf.write_text(
                (f"tls-port {port}\n{tls}" if self.tls else f"port {port}\n")
                + f"bind 127.0.0.1\ndaemonize no\ndir {self.folder}\n"
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
            raw = self._cmd(port, "INFO", section, password=self.password).decode(errors="replace")
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
            raw = self._cmd(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        except OSError:
            return None
        parts = raw.split(b"\r\n")
        # *2 $9 127.0.0.1 $4 6379
        return int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None

    def _master_field(self, sentinel: int, name: str) -> str | None:
        try:
            raw = self._cmd(sentinel, "SENTINEL", "MASTER", SERVICE).split(b"\r\n")
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
                tls: dict[str, object] = (
                    {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
                )
                with redis.Redis(port=port, socket_timeout=1.0, **tls) as client:  # type: ignore[arg-type]
                    replicas = client.sentinel_slaves(SERVICE)
            except redis.RedisError:
                return False
            mine = [r for r in replicas if int(r["port"]) == replica]
            if not mine or mine[0]["is_sdown"] or mine[0]["is_odown"]:
                return False
        return True

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote the replica now, no agreement needed."""
        reply = self._cmd(self.sentinel_ports[0], "SENTINEL", "FAILOVER", SERVICE)
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
def sentinel_deployment(
    folder: Path, password: str | None = None, tls: TlsFiles | None = None
) -> Iterator[SentinelDeployment]:
    """A started deployment (its data nodes requiring ``password`` if given, TLS only with
    ``tls``); every process killed when the block ends."""
    deployment = SentinelDeployment(folder, password=password, tls=tls)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()

"""A real Redis Cluster on free loopback ports: 3 primaries and (optionally) a replica each.

Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``;
``cluster-node-timeout`` is 1000 ms so a killed primary's replica is promoted within a
few seconds. Every wait is on a condition with a deadline (``CLUSTER INFO``, ``CLUSTER
NODES``), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from pricectl.loadtest.spawn import free_port
from tests.waiting import UNIT, wait_for

__all__ = ["RedisClusterNodes", "redis_cluster"]


def _cluster_port() -> int:
    """A free port Redis 7.0 takes for a cluster node: at most 55535 (it refuses higher
    ones, whatever the bus port)."""
    while True:
        port = free_port()
        if port <= 55535:
            return port


def _covers(ranges: object, slot: int) -> bool:
    """Whether redis-py's parsed ``slots`` of a node (``[["0", "5460"], ["5461"]]``: a
    lone slot has no upper bound) hold ``slot``."""
    return any(
        int(r[0]) <= slot <= int(r[-1])
        for r in ranges  # type: ignore[attr-defined]
    )


class RedisClusterNodes:
    """The processes of one cluster in ``folder``; ``url`` is its ``redis+cluster://`` URL
    (every node listed), :meth:`url_via` one that names a single node."""

    def __init__(self, folder: Path, primaries: int = 3, replicas: int = 1) -> None:
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed: run `make test`")
        self.exe, self.cli = exe, cli
        self.folder = folder
        self.replicas = replicas
        self.ports = [_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def url_via(self, port: int) -> str:
        return f"redis+cluster://127.0.0.1:{port}"

    def _start(self, port: int) -> None:
        folder = self.folder / f"node-{port}"
        folder.mkdir(exist_ok=True)
        with open(folder / "redis.log", "ab") as log:
            self.procs[port] = subprocess.Popen(
                [
                    self.exe,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(folder),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self._ping(port), 10, f"cluster node {port}")

    def start(self) -> None:
        for port in self.ports:
            self._start(port)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60 * UNIT,
        )
        wait_for(self.healthy, 30, "cluster_state:ok on every node")
        # A replica that never finished its first sync would not take over.
        wait_for(self.replicas_in_sync, 30, "every replica in sync with its primary")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again (after :meth:`kill`): it keeps its nodes.conf,
        so it rejoins, as a replica of the node that replaced it."""
        self._start(port)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``, as a crash would."""
        self.procs[port].kill()
        self.procs[port].wait(timeout=10)

    def migrate_slot(self, slot: int, target: int) -> int:
        """Move hash slot ``slot`` to the primary on ``target`` as a resharding does
        (https://redis.io/docs/latest/commands/cluster-setslot/): the target IMPORTING, the
        owner MIGRATING, its keys MIGRATEd, then ``SETSLOT NODE`` on the target, the old
        owner and every other primary. Returns the old owner's port; waits until every
        node agrees."""
        nodes = self._nodes(target)
        ids = {port: str(info["node_id"]) for port, info in nodes.items()}
        source = next(
            port
            for port, info in nodes.items()
            if "master" in str(info["flags"]) and _covers(info["slots"], slot)
        )
        assert source != target, f"slot {slot} already lives on {target}"
        clients = {p: redis.Redis(port=p, socket_timeout=5.0) for p in self.primaries(target)}
        try:
            clients[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
            clients[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
            while names := clients[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                clients[source].execute_command(
                    "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *names
                )
            for port in [target, source, *(p for p in clients if p not in (target, source))]:
                clients[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
        finally:
            for client in clients.values():
                client.close()
        wait_for(lambda: self._slot_owner_everywhere(slot) == target, 10, f"slot {slot} moved")
        return source

    def _slot_owner_everywhere(self, slot: int) -> int | None:
        """The port every live node names as ``slot``'s owner, None while they differ."""
        owners = set()
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            for node, info in self._nodes(port).items():
                if "master" in str(info["flags"]) and _covers(info["slots"], slot):
                    owners.add(node)
        return owners.pop() if len(owners) == 1 else None

    # --- what the cluster says ------------------------------------------------------

    def _ping(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _nodes(self, port: int) -> dict[int, dict[str, object]]:
        """``CLUSTER NODES`` as the node on ``port`` sees it: port -> redis-py's parsed entry
        (``flags``, ``slots``, ...)."""
        with redis.Redis(port=port, socket_timeout=1.0, decode_responses=True) as client:
            raw = client.execute_command("CLUSTER NODES")
        return {int(addr.split("@")[0].rsplit(":", 1)[1]): info for addr, info in raw.items()}

    def _live(self) -> int:
        return next(p for p, proc in self.procs.items() if proc.poll() is None)

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and agrees on the primaries."""
        views = set()
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            try:
                with redis.Redis(port=port, socket_timeout=1.0, decode_responses=True) as c:
                    if c.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
                views.add(tuple(sorted(self.primaries(port))))
            except redis.RedisError:
                return False
        return len(views) == 1

    def replicas_in_sync(self) -> bool:
        """Every live replica says ``master_link_status:up``."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            try:
                with redis.Redis(port=port, socket_timeout=1.0, decode_responses=True) as c:
                    info = c.info("replication")
            except redis.RedisError:
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def promoted(self, victim: int) -> bool:
        """The primary on ``victim`` (killed) has been replaced: every live node says
        ``cluster_state:ok`` and names 3 primaries, none of them ``victim``."""
        return self.healthy() and victim not in self.primaries() and len(self.primaries()) == 3

    def primaries(self, via: int | None = None) -> list[int]:
        """Ports of the live primaries that own slots, as the node on ``via`` sees them."""
        nodes = self._nodes(via if via is not None else self._live())
        return sorted(
            port
            for port, info in nodes.items()
            if "master" in str(info["flags"]) and "fail" not in str(info["flags"]) and info["slots"]
        )

    def replicas_of(self, primary: int) -> list[int]:
        """Ports of the replicas of the primary on ``primary``."""
        nodes = self._nodes(self._live())
        node_id = nodes[primary]["node_id"]
        return [port for port, info in nodes.items() if info["master_id"] == node_id]

    def owner(self, key: str, via: int | None = None) -> int:
        """The port of the live primary that owns ``key``'s slot."""
        port = via if via is not None else self._live()
        with redis.Redis(port=port, socket_timeout=1.0) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        for node, info in self._nodes(port).items():
            if "master" not in str(info["flags"]) or "fail" in str(info["flags"]):
                continue
            if _covers(info["slots"], slot):
                return node
        raise AssertionError(f"no live primary owns slot {slot} of {key!r}")


@contextlib.contextmanager
def redis_cluster(folder: Path, replicas: int = 1) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(folder, replicas=replicas)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()

"""A real local Redis Cluster for tests: 3 masters and 3 replicas on free loopback ports."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field

import redis
import redis.cluster

from tests.redis_servers import RedisServer, path_redis_cli, path_redis_server, start_redis

NODE_TIMEOUT_MS = 1000  # how soon a replica takes over from a silent master
_CLUSTER_MODE = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS))


@dataclass
class RedisCluster:
    """Six redis-server processes in one cluster; ``url`` is mcluster's Cluster URL."""

    binary: str
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        return f"redis+cluster://{seeds}"

    def client(self) -> redis.cluster.RedisCluster:
        node = next(n for n in self.nodes if n.proc.poll() is None)
        return redis.cluster.RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=5)

    def version(self) -> str:
        return str(self.nodes[0].client().info("server")["redis_version"])

    def node_of(self, key: str) -> RedisServer:
        """The master serving ``key``'s slot, as a fresh client sees the cluster."""
        client = self.client()
        try:
            port = int(client.get_node_from_key(key).port)
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def kill(self, node: RedisServer) -> None:
        """kill -9: no goodbye, its replica takes over after NODE_TIMEOUT_MS."""
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    def restart(self, node: RedisServer) -> RedisServer:
        """Start a killed node again on its port and folder; it rejoins (as a replica)."""
        args = [self.binary, "--port", str(node.port), "--bind", "127.0.0.1", *_CLUSTER_MODE]
        args += ["--save", "", "--appendonly", "no", "--dir", str(node.workdir)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        again = RedisServer(self.binary, node.port, proc, node.workdir)
        self.nodes[self.nodes.index(node)] = again
        return again

    def masters(self) -> list[RedisServer]:
        """The live nodes that say they are masters."""
        return [n for n in self.live() if _role(n) == "master"]

    def move_slot(self, key: str, target: RedisServer, chunk: int = 20) -> int:
        """Reshard ``key``'s slot to ``target`` (SETSLOT IMPORTING/MIGRATING, MIGRATE in
        chunks, SETSLOT NODE), as ``redis-cli --cluster reshard`` does; keys moved."""
        source = self.node_of(key)
        src, dst = source.client(), target.client()
        slot = int(src.cluster("keyslot", key))
        src_id, dst_id = (_text(c.cluster("myid")) for c in (src, dst))
        dst.cluster("setslot", slot, "importing", src_id)
        src.cluster("setslot", slot, "migrating", dst_id)
        moved = 0
        while keys := src.cluster("getkeysinslot", slot, chunk):
            src.migrate("127.0.0.1", target.port, keys, 0, 5000)
            moved += len(keys)
            time.sleep(0.01)  # let batches run between chunks
        for node in (dst, src, *(m.client() for m in self.masters())):
            node.cluster("setslot", slot, "node", dst_id)
        return moved

    def wait_failover(self, key: str, dead: RedisServer, timeout: float = 60.0) -> float:
        """Until another master serves ``key``'s slot and the Cluster is ok; seconds taken."""
        start = time.monotonic()
        while self.node_of(key).port == dead.port:
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"no replica took over from {dead.port} in {timeout} s")
            time.sleep(0.05)
        self.wait_ok(timeout)
        return time.monotonic() - start

    def wait_replicas(self, timeout: float = 60.0) -> None:
        """Until every master has its replica linked again."""
        _wait_replicas(self, len(self.nodes) // 2, timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and agrees every slot is served."""
        deadline = time.monotonic() + timeout
        while True:
            if all(_healthy(n) for n in self.live()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become healthy")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _role(node: RedisServer) -> str:
    try:
        return str(node.client().info("replication").get("role"))
    except redis.RedisError:
        return "?"


def _healthy(node: RedisServer) -> bool:
    try:
        info = node.client().cluster("info")
    except redis.RedisError:
        return False
    return bool(info.get("cluster_state") == "ok" and int(info["cluster_slots_ok"]) == 16384)


def start_cluster(masters: int = 3, replicas: int = 1) -> RedisCluster:
    """Start ``masters * (1 + replicas)`` nodes and join them with ``redis-cli --cluster``."""
    binary = path_redis_server()
    cli = path_redis_cli()
    if binary is None or cli is None:
        raise RuntimeError("a Redis Cluster needs redis-server and redis-cli on PATH")
    cluster = RedisCluster(binary)
    try:
        for _ in range(masters * (1 + replicas)):
            cluster.nodes.append(start_redis(binary, *_CLUSTER_MODE))
        addrs = [f"127.0.0.1:{n.port}" for n in cluster.nodes]
        create = [cli, "--cluster", "create", *addrs, "--cluster-replicas", str(replicas)]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=120)
        cluster.wait_ok(60)
        _wait_replicas(cluster, masters * replicas, 60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_replicas(cluster: RedisCluster, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        linked = 0
        for node in cluster.live():
            info = node.client().info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                linked += 1
        if linked >= count:
            return
        time.sleep(0.05)
    raise RuntimeError("the Redis Cluster's replicas did not link to their masters")


AnyRedis = RedisServer | RedisCluster  # what the shared suite's ``shared_redis`` gives

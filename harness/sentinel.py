"""A Redis Sentinel set-up on loopback for failover tests: a master, its replicas and three
sentinels, each its own process on a free port with its own directory.

By default it is deployed as docs/operations.md's "High availability" section says, and as
docker/compose.yml's ``ha`` profile runs it: two replicas, every data node with an append-only
file in a directory of its own (a killed node comes back with its data), quorum 2, and
``down-after-milliseconds 5000``, long enough that a stall of a loaded host is not a failure.
``persistent=False`` with one replica is the deployment the docs warn against, kept to show what
it costs (issue 30: a node restarted empty was promoted by a second failover and its replicas
resynced from it, flushing every job).

The sentinels are Debian's ``redis-sentinel`` (apt-get install redis-sentinel), or the server
binary started with ``--sentinel``: the same program either way.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis

from harness.redis_server import RedisServer, free_port

MASTER_NAME = "mymaster"


def sentinel_command(conf: Path, binary: str | None = None) -> list[str]:
    if binary is not None:
        return [binary, str(conf), "--sentinel"]
    found = shutil.which("redis-sentinel")
    if found is not None:
        return [found, str(conf)]
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("neither redis-sentinel nor redis-server found (apt-get install redis-sentinel)")
    return [server, str(conf), "--sentinel"]


class SentinelSet:
    def __init__(
        self,
        sentinels: int = 3,
        replicas: int = 2,
        down_after_ms: int = 5000,
        persistent: bool = True,
        node_args: tuple[str, ...] = (),
        binary: str | None = None,
    ):
        self.master = RedisServer(appendonly=persistent, extra=node_args, binary=binary)
        follow = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replicas = [
            RedisServer(appendonly=persistent, extra=(*node_args, *follow), binary=binary) for _ in range(replicas)
        ]
        self.nodes = [self.master, *self.replicas]
        self.dir = Path(tempfile.mkdtemp(prefix="lvmq-sentinel-"))
        self.ports = [free_port() for _ in range(sentinels)]
        self.procs: list[subprocess.Popen] = []
        for replica in self.replicas:
            self._wait(lambda r=replica: r.client().info("replication").get("master_link_status") == "up", "sync")
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                f"logfile {self.log(port)}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.procs.append(
                subprocess.Popen(sentinel_command(conf, binary), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        self._wait(self._all_see_replicas, "sentinels to discover the replicas and each other")

    def log(self, port: int) -> Path:
        return self.dir / f"sentinel-{port}.log"

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def sentinel(self, i: int = 0) -> Redis:
        return Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=1, decode_responses=True)

    def master_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def current(self) -> RedisServer:
        """The node the sentinels name as master now."""
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def switches(self) -> int:
        """Failovers so far: each sentinel logs one ``+switch-master`` per failover it learns of."""
        return max(self.log(port).read_text(errors="replace").count("+switch-master") for port in self.ports)

    def _all_see_replicas(self) -> bool:
        for i in range(len(self.ports)):
            try:
                master = self.sentinel(i).sentinel_master(MASTER_NAME)
            except Exception:  # noqa: BLE001 - not up yet
                return False
            seen, others = int(master.get("num-slaves", 0)), int(master.get("num-other-sentinels", 0))
            if seen < len(self.replicas) or others < len(self.ports) - 1:
                return False
        return True

    @staticmethod
    def _wait(check, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def wait_promoted(self, old: RedisServer, timeout: float = 60.0) -> float:
        """Seconds until the sentinels name another node than ``old`` as master."""
        started = time.monotonic()
        self._wait(lambda: self.master_port() != old.port, "a replica's promotion", timeout)
        return time.monotonic() - started

    def cut_replicas(self) -> None:
        """Cut every replica off the master, as a partition would: SIGSTOP them, then have the
        master drop their links. What the master acknowledges from now on reaches no replica. (A
        SIGSTOP alone would not do: the kernel keeps receiving into a stopped replica's socket
        buffer, and it catches up when resumed.) ``resume_replicas()`` ends the stop."""
        for replica in self.replicas:
            replica.pause()
        self.master.client().client_kill_filter(_type="replica")

    def resume_replicas(self) -> None:
        for replica in self.replicas:
            replica.resume()

    def role(self, node: RedisServer) -> str:
        return str(node.client(socket_timeout=1, decode_responses=True).info("replication").get("role"))

    def wait_role(self, node: RedisServer, role: str, timeout: float = 60.0) -> None:
        self._wait(lambda: self.role(node) == role, f"port {node.port} to report role {role}", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for server in self.nodes:
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - already killed by the test
                shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

"""A Redis Sentinel set-up on loopback for failover tests: one master, one replica, three
sentinels, each its own process on a free port with its own temporary directory.

The sentinels are Debian's ``redis-sentinel`` (apt-get install redis-sentinel), or
``redis-server --sentinel`` where only redis-server is installed: the same binary either way.
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


def sentinel_command(conf: Path) -> list[str]:
    binary = shutil.which("redis-sentinel")
    if binary is not None:
        return [binary, str(conf)]
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("neither redis-sentinel nor redis-server found (apt-get install redis-sentinel)")
    return [server, str(conf), "--sentinel"]


class SentinelSet:
    def __init__(self, sentinels: int = 3, down_after_ms: int = 1000, master_args: tuple[str, ...] = ()):
        self.master = RedisServer(extra=master_args)
        self.replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(self.master.port), *master_args))
        self.dir = Path(tempfile.mkdtemp(prefix="lvmq-sentinel-"))
        self.ports = [free_port() for _ in range(sentinels)]
        self.procs: list[subprocess.Popen] = []
        self._wait(lambda: self.replica.client().info("replication").get("master_link_status") == "up", "replica sync")
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                f"logfile {self.dir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.procs.append(
                subprocess.Popen(sentinel_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        self._wait(self._all_see_replica, "sentinels to discover the replica and each other")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def sentinel(self, i: int = 0) -> Redis:
        return Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=1, decode_responses=True)

    def master_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def _all_see_replica(self) -> bool:
        for i in range(len(self.ports)):
            try:
                master = self.sentinel(i).sentinel_master(MASTER_NAME)
            except Exception:  # noqa: BLE001 - not up yet
                return False
            if int(master.get("num-slaves", 0)) < 1 or int(master.get("num-other-sentinels", 0)) < len(self.ports) - 1:
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

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name the replica as master."""
        started = time.monotonic()
        self._wait(lambda: self.master_port() == self.replica.port, "the replica's promotion", timeout)
        return time.monotonic() - started

    def cut_replica(self) -> None:
        """Cut the replica off its master, as a partition would: SIGSTOP it, then have the master
        drop its link. What the master acknowledges from now on never reaches the replica. (A
        SIGSTOP alone would not do: the kernel keeps receiving into the stopped replica's socket
        buffer, and it catches up when resumed.) ``replica.resume()`` ends the stop."""
        self.replica.pause()
        self.master.client().client_kill_filter(_type="replica")

    def stop(self) -> None:
        self.replica.resume()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for server in (self.master, self.replica):
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - already killed by the test
                shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

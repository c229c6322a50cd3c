"""Start a private redis-server on a free port: for tests, benchmarks and the demo.

Never touches another Redis's data: its own port, its own temporary directory, and it is
stopped (and its directory removed) by ``stop()``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        appendonly: bool = False,
        fsync: str = "everysec",
        extra: tuple[str, ...] = (),
        binary: str | None = None,
    ):
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server not found: install it (apt-get install redis-server, brew install redis) "
                "or point LVM_REDIS_URL at a running Redis"
            )
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lvmq-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            fsync,
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            *extra,
        ]
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def halt(self) -> None:
        """Stop the server but keep its data directory (an appendonly file survives) for ``start()``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def wipe(self) -> None:
        """Lose the data directory, as a node whose volume is gone restarts: ``start()`` comes up empty."""
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the appendonly file already holds survives."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        client = Redis.from_url(self.url, socket_timeout=1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir / 'redis.log'}")
            try:
                if client.ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout} s")

    def client(self, **kwargs) -> Redis:
        return Redis.from_url(self.url, **kwargs)

    def stop(self) -> None:
        try:
            self.halt()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def reachable(url: str) -> bool:
    try:
        from config.connections import connect

        return bool(connect(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False

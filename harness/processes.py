"""Start real worker processes the documented way, and wait for their heartbeat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from redis import Redis

from wire.keys import HEARTBEAT_PREFIX


def rq_worker_command(queue: str, name: str, worker_class: str = "worker.LVMWorker") -> list[str]:
    """The documented line: rq worker -w worker.LVMWorker -S json -c config.rq lvm-<model>."""
    rq = shutil.which("rq", path=str(Path(sys.executable).parent)) or shutil.which("rq") or "rq"
    return [rq, "worker", "-w", worker_class, "-S", "json", "-c", "config.rq", "-n", name, queue]


def start_worker(
    queue: str,
    env: dict[str, str],
    name: str | None = None,
    log_path: Path | None = None,
    worker_class: str = "worker.LVMWorker",
) -> tuple[subprocess.Popen, str]:
    name = name or f"w-{uuid.uuid4().hex[:8]}"
    full_env = {**os.environ, **env}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        rq_worker_command(queue, name, worker_class), env=full_env, stdout=out, stderr=subprocess.STDOUT
    )
    return proc, name


def wait_ready(redis: Redis, name: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    """Block until the worker's heartbeat says it serves; raise if it dies or stalls.

    "busy" counts as serving too. The race: a worker with queued jobs flips ready -> busy at
    once, and its next periodic beat writes "busy"; a poller that missed the short "ready"
    window (a loaded host) would otherwise wait until the queue was drained and see "ready"
    only then -- after everything the caller meant to do while jobs were queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with code {proc.returncode} before becoming ready")
        raw = redis.get(HEARTBEAT_PREFIX + name)
        if raw:
            info = json.loads(raw)
            if info.get("status") in ("ready", "busy"):
                return info
        time.sleep(0.05)
    raise TimeoutError(f"worker {name} not ready after {timeout} s")


SERVING_FIELDS = ("device", "encoder_dtype", "bank_search", "prefetch", "max_batch", "lane")


def serving(heartbeat: dict) -> dict:
    """Where and how a benchmarked worker ran, from its own heartbeat: a figure from a GPU
    host proves it ran on the GPU, not on a device setting that never reached the worker."""
    return {key: heartbeat.get(key) for key in SERVING_FIELDS}


def describe(worker: dict) -> str:
    """One line for the text reports: device cpu, encoder bfloat16, bank float16/bfloat16, ..."""
    bank = worker.get("bank_search") or {}
    return (
        f"device {worker.get('device')}, encoder {worker.get('encoder_dtype')}, bank search "
        f"{bank.get('one', '-')} (one) / {bank.get('batch', '-')} (batch), prefetch {worker.get('prefetch')}, "
        f"max batch {worker.get('max_batch')}"
    )


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_gateway(env: dict[str, str], port: int, log_path: Path | None = None) -> subprocess.Popen:
    """`lvmq gateway` on 127.0.0.1:port, as a real process."""
    lvmq = shutil.which("lvmq", path=str(Path(sys.executable).parent)) or "lvmq"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [lvmq, "gateway", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Block until ``url`` answers any HTTP status; raise if the process dies first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} not answering after {timeout} s")

"""What the one-worker benchmarks stand on (bench fairness, priority, embed): a private
redis-server, one real worker started the documented way (and, for bench fairness's light lane,
more beside it), clients of it, and its capacity."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from harness.processes import serving, start_worker, stop, wait_ready
from harness.redis_server import RedisServer


class Stack:
    """A private redis-server and one real worker on the default LSTM artifacts, with
    ``worker_env`` (LVM_* settings) on top; ``client()`` a ChatClient of it."""

    def __init__(self, settings: Any, job_timeout: int | None = None, extra: tuple[dict[str, str], ...] = (),
                 **worker_env: str):  # fmt: skip
        job_timeout = job_timeout or settings.job_timeout
        self.server = RedisServer()
        logdir = Path(tempfile.mkdtemp(prefix="lvmq-bench-"))
        env = {
            "LVM_REDIS_URL": self.server.url,
            "LVM_LOG_LEVEL": "WARNING",
            "LVM_HEARTBEAT_SECONDS": "1",
            "LVM_JOB_TIMEOUT": str(job_timeout),
            "LVM_MODELS__LSTM": str(settings.models["lstm"]),
            "LVM_BANK_PATH": str(settings.bank_path),
            **worker_env,
        }
        self.settings = settings.model_copy(update={"redis_url": self.server.url, "job_timeout": job_timeout})
        self.queue = self.settings.queue_name("lstm")
        self.proc, name = start_worker(self.queue, env, log_path=logdir / "worker.log")
        self.procs = [self.proc]
        try:
            self.worker = serving(wait_ready(self.server.client(), name, self.proc, timeout=180))
            self.others = []  # the heartbeats of the workers started beside it, with ``extra`` on top
            for i, more in enumerate(extra):
                proc, other = start_worker(self.queue, {**env, **more}, log_path=logdir / f"worker{i + 2}.log")
                self.procs.append(proc)
                self.others.append(serving(wait_ready(self.server.client(), other, proc, timeout=180)))
        except BaseException:
            self.close()
            raise

    def client(self, **update: Any) -> Any:
        from producer.client import ChatClient

        return ChatClient(self.server.url, self.settings.model_copy(update=update))

    def capacity(self, pool: list[str], n: int = 400) -> float:
        client = self.client(max_queued=0)
        ids = client.submit_many([{"messages": [pool[i % len(pool)]]} for i in range(n)])
        started = time.perf_counter()
        for job_id in ids:
            client.wait(job_id, timeout=120)
        return n / (time.perf_counter() - started)

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.server.stop()

"""Prometheus metrics for one worker (opt-in: LVM_METRICS_PORT) and per-minute counters in Redis.

Prometheus names follow its conventions: an ``lvm_`` prefix, base units (seconds), ``_total``
on counters. Queue depth and heartbeat age are read when scraped, never polled.

The per-minute counters that let `lvmq stats` report recent throughput from Redis alone
(``lvm:stats:<queue>:<unix minute>:<outcome>``, kept an hour) are written by the finish
script in ``worker.lifecycle``, in the same atomic step as the outcomes they count.
"""

from __future__ import annotations

from collections.abc import Callable

STAGES = ("queue_wait", "encoding", "lvm_inference", "decoding", "total_latency")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerMetrics:
    def __init__(self, model: str, worker: str, queue_depth: Callable[[], float], heartbeat_age: Callable[[], float]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"model": model, "worker": worker}
        self.jobs = Counter(
            "lvm_jobs_total", "Chat jobs handled, by outcome.", ["model", "worker", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "lvm_stage_latency_seconds",
            "Per-request latency of each stage (total_latency = queue wait + worker time).",
            ["model", "worker", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "lvm_batch_size",
            "Requests per micro-batch.",
            ["model", "worker"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "lvm_model_load_seconds",
            "Start-up time to load model, encoder and bank.",
            ["model", "worker"],
            registry=self.registry,
        )
        depth = Gauge(
            "lvm_queue_depth", "Jobs waiting in this worker's queue(s).", ["model", "worker"], registry=self.registry
        )
        depth.labels(**labels).set_function(queue_depth)
        age = Gauge(
            "lvm_heartbeat_age_seconds",
            "Seconds since this worker last wrote its heartbeat.",
            ["model", "worker"],
            registry=self.registry,
        )
        age.labels(**labels).set_function(heartbeat_age)
        self.labels = labels

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)

    def observe(self, result: dict | None, batch_size: int | None = None) -> None:
        if batch_size is not None:
            self.batch.labels(**self.labels).observe(batch_size)
        if result is None:
            self.jobs.labels(**self.labels, outcome="failed").inc()
            return
        self.jobs.labels(**self.labels, outcome="finished").inc()
        lat = result["latency_breakdown"]
        for stage in STAGES:
            if f"{stage}_ms" in lat:  # an embed job has no LVM or decoding stage
                self.latency.labels(**self.labels, stage=stage).observe(lat[f"{stage}_ms"] / 1000.0)

"""LVMWorker: an RQ SimpleWorker bound to one model on one device.

SimpleWorker runs jobs in its own process: forking after torch has loaded deadlocked on
these machines (libgomp), and CUDA/MPS cannot fork at all. The model, encoder and bank load
once in ``__init__``, so a checkpoint that fails strict loading stops `rq worker` with a
non-zero exit and the loader's message before a single job is taken.

Start it with the plain RQ CLI (settings from ``LVM_*`` variables)::

    rq worker -w worker.LVMWorker -S json -c config.rq lvm-lstm

or ``lvmq worker --model lstm --device cpu``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from config import Settings, load_settings
from producer.schema import JOB_FUNCTION, ChatError
from worker import jobs
from worker.heartbeat import Heartbeat
from worker.logs import configure_logging, get_logger
from worker.metrics import count_minute
from worker.queue import LVMQueue, job_id_or_drop
from worker.recovery import recover_orphans
from worker.runtime import RequestRejected, Runtime

log = get_logger("lvmq.worker")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

# LMOVE up to ARGV[1] ids from the queue (KEYS[1]) to its intermediate list (KEYS[2]), atomically.
CLAIM_SCRIPT = """
local claimed = {}
for i = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  claimed[i] = id
end
return claimed
"""


class LVMWorker(SimpleWorker):
    def __init__(self, queues, *args: Any, settings: Settings | None = None, model: str | None = None, **kwargs: Any):
        settings = settings or load_settings()
        configure_logging(settings.log_level, settings.log_format)
        # Jobs are JSON, never pickle, whatever serializer the command line asked for.
        kwargs["serializer"] = JSONSerializer
        kwargs["queue_class"] = LVMQueue
        names = [
            q if isinstance(q, str) else q.name for q in ([queues] if isinstance(queues, (str, Queue)) else queues)
        ]
        connection = kwargs.get("connection")
        queues = [LVMQueue(n, connection=connection, serializer=JSONSerializer) for n in names]
        super().__init__(queues, *args, **kwargs)
        self.settings = settings
        self.model_name = self._model_for(names, model or settings.model)
        self.jobs_done = 0
        self.jobs_failed = 0
        self.current_job: tuple[str, float] | None = None
        self.batch_sizes: deque[int] = deque(maxlen=200)
        self.in_flight: set[str] = set()  # ids of the jobs this process is running now
        self.runtime: Runtime | None = None
        self.metrics: Any = None
        self.pulse = Heartbeat(
            Redis(connection_pool=self.connection.connection_pool),
            self.name,
            settings.heartbeat_seconds,
            self._heartbeat_info,
            on_beat=self._recover,
        )
        self._claim = self.connection.register_script(CLAIM_SCRIPT)
        self.pulse.start()
        log.info("worker starting", worker=self.name, model=self.model_name, queues=names, device=settings.device)
        try:
            self.runtime = Runtime.load(settings, self.model_name, self.name, redis=self.connection)
        except Exception as exc:
            self.pulse.set("error", f"{type(exc).__name__}: {exc}")
            self.pulse.stop(delete=False)  # leave the error visible until the key's TTL
            log.error("worker failed to load; not serving", worker=self.name, error=str(exc))
            raise
        jobs.install(self.runtime)
        self.metrics = self._start_metrics()
        log.info(
            "worker ready",
            worker=self.name,
            model=self.model_name,
            checkpoint=self.runtime.checkpoint,
            model_version=self.runtime.model_version,
            device=self.runtime.device,
            load_seconds=round(self.runtime.load_seconds, 2),
        )
        self.pulse.set("ready")

    def work(self, *args: Any, logging_level: str | None = None, **kwargs: Any) -> bool:
        """RQ's own per-job log lines repeat the one JSON event per job this worker logs, so RQ
        logs at WARNING unless `rq worker --logging_level`/`-v` asks for more."""
        return super().work(*args, logging_level=logging_level or "WARNING", **kwargs)

    def _start_metrics(self) -> Any:
        if self.settings.metrics_port is None:
            return None
        from worker.metrics import WorkerMetrics

        metrics = WorkerMetrics(
            self.model_name,
            self.name,
            queue_depth=lambda: float(sum(q.count for q in self.queues)),
            heartbeat_age=lambda: time.time() - self.pulse.last_written,
        )
        assert self.runtime is not None
        metrics.load_seconds.labels(**metrics.labels).set(self.runtime.load_seconds)
        metrics.serve(self.settings.metrics_port)
        log.info("metrics served", port=self.settings.metrics_port)
        return metrics

    def _model_for(self, queue_names: list[str], model: str | None) -> str:
        if model:
            return model
        models = {self.settings.model_for_queue(n) for n in queue_names}
        if len(models) != 1 or None in models:
            raise ValueError(
                f"cannot tell which model to serve from queues {queue_names}: name one queue "
                f"'{self.settings.queue_prefix}<model>' or set LVM_MODEL"
            )
        return models.pop()  # type: ignore[return-value]

    def _heartbeat_info(self) -> dict[str, Any]:
        rt = self.runtime
        current = None
        if self.current_job:
            job_id, since = self.current_job
            current = {"id": job_id, "running_s": round(time.time() - since, 3)}
        return {
            "worker": self.name,
            "model": self.model_name,
            "model_version": rt.model_version if rt else None,
            "checkpoint": str(self.settings.models.get(self.model_name, "")),
            "device": rt.device if rt else self.settings.device,
            "queues": self.queue_names(),
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "current_job": current,
            "latency_p50_ms": rt.p50_ms() if rt else None,
            "max_batch": self.settings.max_batch,
            "last_batch_size": self.batch_sizes[-1] if self.batch_sizes else None,
            "mean_batch_size": round(sum(self.batch_sizes) / len(self.batch_sizes), 2) if self.batch_sizes else None,
        }

    def _recover(self, connection: Redis) -> None:
        """Runs on each heartbeat: re-run or fail jobs whose worker died mid-batch."""
        if self.runtime is not None:
            recover_orphans(connection, self.queues, self.name, self.in_flight)

    # -- job execution: micro-batches ---------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the dequeued job together with whatever else is already waiting (up to max_batch)."""
        self.current_job = (job.id, time.time())
        self._state = WorkerStatus.BUSY  # a SIGTERM from here on waits for this batch (warm shutdown)
        self.pulse.set("busy", now=False)  # shown on the next beat: no extra round trip per job
        try:
            batch = [(job, queue)]
            self.in_flight = {job.id}
            if self.settings.max_batch > 1 and not self._stop_requested:
                batch += self.retry_redis("claim", lambda: self.claim_waiting(self.settings.max_batch - 1))
            self.in_flight = {j.id for j, _ in batch}
            chat_jobs = []
            for item in batch:
                reject = payload_error(item[0])
                if reject is None:
                    chat_jobs.append(item)
                else:  # fails alone, through RQ's own path, with the reason
                    turn_into_rejection(item[0], reject)
                    execution = self.retry_redis("prepare", lambda item=item: self.prepare_execution(item[0]))
                    self._count(self.perform_job(item[0], item[1], execution), batch_size=1)
            if chat_jobs:
                self.perform_batch(chat_jobs)
        finally:
            self.in_flight = set()
            self.current_job = None
            self._state = WorkerStatus.IDLE
            try:
                self.set_state(WorkerStatus.IDLE)
            except REDIS_DOWN:
                pass  # the dequeue loop reconnects; the state is rewritten there
            self.pulse.set("draining" if self._stop_requested else "ready", now=self._stop_requested)

    def claim_waiting(self, limit: int) -> list[tuple[Job, Queue]]:
        """Move up to ``limit`` waiting job ids into each queue's intermediate list with one
        script call per queue, and fetch them. Claimed jobs go into the started registry before
        any runs (see perform_batch), so a worker that dies mid-batch leaves them recoverable."""
        claimed: list[tuple[Job, Queue]] = []
        deadline = time.monotonic() + self.settings.max_batch_wait_ms / 1000.0
        while True:
            for queue in self.queues:
                want = limit - len(claimed)
                if want <= 0:
                    break
                intermediate = queue.intermediate_queue.key
                raws = self._claim(keys=[queue.key, intermediate], args=[want])
                ids = (job_id_or_drop(raw, queue.key, self.connection, intermediate) for raw in raws)
                valid = [job_id for job_id in ids if job_id is not None]
                jobs = Job.fetch_many(valid, connection=self.connection, serializer=JSONSerializer) if valid else []
                for job_id, job in zip(valid, jobs, strict=True):
                    if job is None:  # expired (queue_ttl) between enqueue and claim
                        self.connection.lrem(intermediate, 1, job_id)
                    else:
                        claimed.append((job, queue))
            if len(claimed) >= limit or time.monotonic() >= deadline:
                return claimed
            time.sleep(0.001)

    def perform_batch(self, items: list[tuple[Job, Queue]]) -> None:
        """RQ's perform_job, for many jobs at once: prepare each, run one pipeline, finalise each."""
        executions = self.retry_redis("prepare", lambda: self.prepare_many(items))
        prepared = [(job, queue, execution) for (job, queue), execution in zip(items, executions, strict=True)]
        self.batch_sizes.append(len(prepared))
        timeout = min(job.timeout or self.queue_class.DEFAULT_TIMEOUT for job, _, _ in prepared)
        assert self.runtime is not None
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=prepared[0][0].id):
                outcomes: list[Any] = self.runtime.handle_batch(
                    [(job.args[0], job.enqueued_at, job.started_at) for job, _, _ in prepared]
                )
        except Exception as exc:  # noqa: BLE001 - e.g. the batch ran past its timeout: every job fails
            outcomes = [exc] * len(prepared)
        for index, ((job, queue, execution), outcome) in enumerate(zip(prepared, outcomes, strict=True)):
            first = index == 0
            if isinstance(outcome, BaseException):
                error = (
                    outcome.error
                    if isinstance(outcome, RequestRejected)
                    else ChatError(error="internal", message=f"{type(outcome).__name__}: {outcome}")
                )
                exc_info = (type(outcome), outcome, outcome.__traceback__)
                self.retry_redis("record error", lambda job=job, error=error: jobs.record_error(job, error))
                self.retry_redis(
                    "finalise",
                    lambda job=job, queue=queue, execution=execution, exc_info=exc_info: self._finalize_failure(
                        job, queue, execution, exc_info
                    ),
                )
                jobs.log_outcome(job, self.model_name, error=error)
                self._count(False, batch_size=len(prepared) if first else None)
            else:
                self.retry_redis(
                    "finalise",
                    lambda job=job, queue=queue, execution=execution, outcome=outcome: self._finalize_success(
                        job, queue, execution, outcome
                    ),
                )
                jobs.log_outcome(job, self.model_name, result=outcome)
                self._count(True, outcome, batch_size=len(prepared) if first else None)

        failed = sum(isinstance(outcome, BaseException) for outcome in outcomes)
        try:
            count_minute(self.connection, prepared[0][1].name, len(outcomes) - failed, failed)
        except REDIS_DOWN:
            pass  # throughput statistics are best effort

    def prepare_many(self, items: list[tuple[Job, Queue]]) -> list[Execution]:
        """RQ's prepare_execution + prepare_job_execution for every job of a batch, in one
        transaction (two round trips per job otherwise): each job gets its execution in the
        started registry, status started, its worker name, and leaves the intermediate list."""
        executions = []
        with self.connection.pipeline() as pipe:
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            ttl = 0
            for job, queue in items:
                job_ttl = self.get_heartbeat_ttl(job)
                ttl = max(ttl, job_ttl)
                execution = Execution.create(job, job_ttl, pipeline=pipe, worker_name=self.name)
                self.executions[execution.id] = execution
                job.heartbeat(now(), job_ttl, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
                pipe.lrem(queue.intermediate_queue.key, 1, job.id)
                executions.append(execution)
            self.heartbeat(ttl, pipeline=pipe)
            pipe.execute()
        return executions

    # -- Redis outages ------------------------------------------------------------------------
    def retry_redis(self, what: str, step: Callable[[], Any]) -> Any:
        """Run ``step``, retrying with backoff while Redis is unreachable.

        Results already computed are held in memory and written once Redis is back, so a
        restart of Redis loses neither the queued jobs (appendonly) nor the batch in flight.
        A forced shutdown (second SIGTERM, drain timeout) ends the wait: its jobs stay in the
        started registry, where orphan recovery finds them.
        """
        delay = 0.1
        while True:
            try:
                return step()
            except REDIS_DOWN as exc:
                log.warning("redis unreachable; retrying", step=what, retry_in_s=round(delay, 2), error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_DOWN as exc:  # RQ's loop would quit on this; the dequeue loop backs off instead
            log.warning("redis unreachable; worker heartbeat skipped", error=str(exc))

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_DOWN as exc:
            log.warning("redis unreachable; suspension check skipped", error=str(exc))

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except REDIS_DOWN as exc:
            log.warning("redis unreachable; maintenance skipped", error=str(exc))

    # -- graceful shutdown ------------------------------------------------------------------
    def request_stop(self, signum: int, frame: Any) -> None:
        """First SIGTERM/SIGINT: stop taking jobs, finish the batch in flight, exit 0.

        The heartbeat says ``draining`` at once. If the batch is not done within
        LVM_DRAIN_SECONDS, the worker sends itself the second signal: a cold shutdown, whose
        unfinished jobs stay in the started registry for orphan recovery.
        """
        self.pulse.set("draining", now=True)
        log.info(
            "draining: finishing the current batch, taking no new jobs",
            worker=self.name,
            drain_seconds=self.settings.drain_seconds,
        )
        timer = threading.Timer(self.settings.drain_seconds, self._drain_timeout)
        timer.daemon = True
        timer.start()
        super().request_stop(signum, frame)

    def _drain_timeout(self) -> None:
        log.warning("drain timeout: shutting down now; unfinished jobs will be recovered", worker=self.name)
        os.kill(os.getpid(), signal.SIGTERM)

    def _count(self, ok: bool, result: dict | None = None, batch_size: int | None = None) -> None:
        if ok:
            self.jobs_done += 1
        else:
            self.jobs_failed += 1
        if self.metrics is not None:
            self.metrics.observe(result if ok else None, batch_size)

    def teardown(self) -> None:
        """On the way out: hand back jobs this process claimed but did not finish (a cold
        shutdown mid-batch), then drop the heartbeat so the worker leaves `lvmq health`."""
        self.pulse.stop(delete=False)
        try:
            for job_id, action in recover_orphans(self.connection, self.queues, self.name, set()):
                log.warning("handed back an unfinished job on shutdown", job_id=job_id, action=action)
        except REDIS_DOWN as exc:
            log.warning("redis unreachable at shutdown; unfinished jobs await recovery", error=str(exc))
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            log.warning("redis unreachable at shutdown", error=str(exc))
        finally:
            self.pulse.stop(delete=True)
            jobs.install(None)


def payload_error(job: Job) -> ChatError | None:
    """Why this job must not run here, or None. Only ``worker.jobs.chat(request)`` may run:
    with a JSON job naming any importable function, RQ would otherwise call it."""
    try:
        func, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception as exc:  # DeserializationError: raw bytes, bad zlib, not JSON
        cause = exc.__cause__ or exc
        return ChatError(
            error="bad_payload",
            message=f"job data is not a JSON job ({type(cause).__name__}: {cause}); "
            "enqueue with RQ's JSON serializer (rq.serializers.JSONSerializer)",
        )
    if func != JOB_FUNCTION:
        return ChatError(error="bad_payload", message=f"this worker runs only {JOB_FUNCTION}, not {func!r}")
    if len(args) != 1 or kwargs:
        return ChatError(error="bad_payload", message=f"{JOB_FUNCTION} takes exactly one argument, the request object")
    if any(getattr(job, f"_{k}_callback_name", None) for k in ("success", "failure", "stopped")):
        return ChatError(error="bad_payload", message="chat jobs may not carry callbacks")
    return None


def turn_into_rejection(job: Job, error: ChatError) -> None:
    """Make the job call ``worker.jobs.reject(error)`` so RQ fails it through its own path."""
    job.func_name = "worker.jobs.reject"
    job.instance = None
    job.args = (error.model_dump(mode="json"),)
    job.kwargs = {}
    for kind in ("success", "failure", "stopped"):
        setattr(job, f"_{kind}_callback_name", None)

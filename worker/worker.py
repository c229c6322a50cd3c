"""LVMWorker: the RQ adapter. An RQ SimpleWorker bound to one model on one device.

SimpleWorker runs jobs in its own process: forking after torch has loaded deadlocked on
these machines (libgomp), and CUDA/MPS cannot fork at all. The model, encoder and bank load
once in ``__init__``, so a checkpoint that fails strict loading stops `rq worker` with a
non-zero exit and the loader's message before a single job is taken.

RQ's registration, `rq info`, `rq suspend` and the job statuses producers read all stay. RQ's
per-job dequeue and bookkeeping are replaced by ``worker.lifecycle``: one script claims a batch,
one writes its outcomes. Hostile job hashes are read by ``worker.jobdata`` and fail alone.

Start it with the plain RQ CLI (settings from ``LVM_*`` variables)::

    rq worker -w worker.LVMWorker -S json -c config.rq lvm-lstm

or ``lvmq worker --model lstm --device cpu``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker_registration import clean_worker_registry

from config import Settings, load_settings
from producer.schema import ChatError
from worker import faults
from worker.deadline import Alarm, Interrupted
from worker.heartbeat import Heartbeat
from worker.jobdata import ChatJob, JobRejected, parse
from worker.lifecycle import Claim, Lifecycle, Outcome
from worker.logs import configure_logging, get_logger
from worker.runtime import RequestRejected, Runtime

log = get_logger("lvmq.worker")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
IDLE_BLOCK_S = 1  # longest a blocked claim waits before the loop looks at signals and maintenance
MAINTENANCE_S = 60


class GiveUp(Exception):
    """A forced stop ended a wait for Redis; the leased jobs are left for recovery."""


def default_name() -> str:
    """Unique across hosts and restarts: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}.{os.getpid()}.{os.urandom(2).hex()}"


class LVMWorker(SimpleWorker):
    def __init__(self, queues, *args: Any, settings: Settings | None = None, model: str | None = None, **kwargs: Any):
        settings = settings or load_settings()
        configure_logging(settings.log_level, settings.log_format)
        kwargs["serializer"] = JSONSerializer  # jobs are JSON, never pickle, whatever -S said
        kwargs["name"] = kwargs.get("name") or default_name()
        names = [
            q if isinstance(q, str) else q.name for q in ([queues] if isinstance(queues, (str, Queue)) else queues)
        ]
        connection = kwargs.get("connection")
        queues = [Queue(n, connection=connection, serializer=JSONSerializer) for n in names]
        super().__init__(queues, *args, **kwargs)
        self.settings = settings
        self.model_name = self._model_for(names, model or settings.model)
        self.jobs_done = 0
        self.jobs_failed = 0
        self.batch_sizes: deque[int] = deque(maxlen=200)
        self.lifecycle = Lifecycle(
            self.connection, self.name, settings.lease_s, settings.max_reruns, settings.max_job_bytes
        )
        # The batch in flight as one tuple (queue, token, ids, started, deadline), replaced whole:
        # the heartbeat thread reads it without a lock and renews exactly these leases.
        self.lease: tuple[str, str, tuple[str, ...], float, float] = ("", "", (), 0.0, 0.0)
        self.stop_signals = 0  # set by the signal handler; everything else reads it
        self._suspension_checked = 0.0
        self.alarm = Alarm()
        self.runtime: Runtime | None = None
        self.metrics: Any = None
        self.pulse = Heartbeat(
            Redis(connection_pool=self.connection.connection_pool),
            self.name,
            settings.heartbeat_seconds,
            self._heartbeat_info,
            on_beat=self._on_beat,
        )
        self.pulse.start()
        log.info("worker starting", worker=self.name, model=self.model_name, queues=names, device=settings.device)
        try:
            self.runtime = Runtime.load(settings, self.model_name, self.name, redis=self.connection)
        except Exception as exc:
            self.pulse.set("error", f"{type(exc).__name__}: {exc}")
            self.pulse.stop(delete=False)  # leave the error visible until the key's TTL
            log.error("worker failed to load; not serving", worker=self.name, error=str(exc))
            raise
        self.metrics = self._start_metrics()
        log.info(
            "worker ready",
            worker=self.name,
            model=self.model_name,
            checkpoint=self.runtime.checkpoint,
            model_version=self.runtime.model_version,
            device=self.runtime.device,
            encoder_dtype=self.runtime.encoder_dtype,
            load_seconds=round(self.runtime.load_seconds, 2),
        )
        self.pulse.set("ready")

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
        _, _, ids, started, deadline = self.lease
        info: dict[str, Any] = {
            "worker": self.name,
            "incarnation": self.lifecycle.incarnation,
            "model": self.model_name,
            "model_version": rt.model_version if rt else None,
            "checkpoint": str(self.settings.models.get(self.model_name, "")),
            "device": rt.device if rt else self.settings.device,
            "encoder_dtype": rt.encoder_dtype if rt else None,
            "queues": self.queue_names(),
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "current_job": {"id": ids[0], "jobs": len(ids), "running_s": round(time.time() - started, 3)}
            if ids
            else None,
            "busy_deadline_at": deadline if ids else None,
            "latency_p50_ms": rt.p50_ms() if rt else None,
            "max_batch": self.settings.max_batch,
            "last_batch_size": self.batch_sizes[-1] if self.batch_sizes else None,
            "mean_batch_size": round(sum(self.batch_sizes) / len(self.batch_sizes), 2) if self.batch_sizes else None,
        }
        if self.stop_signals and self.pulse.status in ("ready", "busy"):
            info["status"] = "draining"
        return info

    def _on_beat(self, connection: Redis) -> None:
        """Heartbeat thread: renew this worker's leases, then recover other workers' orphans."""
        queue, token, ids, _, _ = self.lease
        lost = self.lifecycle.renew(self.queue_names(), token, list(ids), connection=connection)
        if lost:
            log.warning("lost the lease of running jobs; their results will be discarded", job_ids=lost)
        for name in self.queue_names():
            for job_id, action, owner in self.lifecycle.recover(
                name, token, self.settings.failure_ttl, connection=connection
            ):
                if action != "cleared":
                    log.warning("recovered a job from a silent worker", job_id=job_id, action=action, owner=owner)

    # -- the work loop ----------------------------------------------------------------------
    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        **_: Any,
    ) -> bool:
        """RQ's loop, on the lifecycle scripts. RQ's own log lines stay at WARNING unless
        `rq worker --logging_level`/`-v` asks for more: the worker logs one JSON event per job.
        ``max_jobs`` counts jobs, not batches."""
        self.bootstrap(logging_level or "WARNING", date_format, log_format)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        done = 0
        idle_since = time.monotonic()
        next_maintenance = 0.0
        try:
            while not self.stop_signals:
                if time.monotonic() >= next_maintenance:
                    self._maintain()
                    next_maintenance = time.monotonic() + MAINTENANCE_S
                if self._suspended(burst):
                    continue
                taken = self._serve_once(block=not burst, limit=self._limit(max_jobs, done))
                if taken:
                    done += taken
                    idle_since = time.monotonic()
                    if max_jobs is not None and done >= max_jobs:
                        break
                elif burst or (max_idle_time is not None and time.monotonic() - idle_since > max_idle_time):
                    break
        except GiveUp:
            pass
        finally:
            self.teardown()
        return bool(done)

    def _limit(self, max_jobs: int | None, done: int) -> int:
        return self.settings.max_batch if max_jobs is None else max(1, min(self.settings.max_batch, max_jobs - done))

    def _suspended(self, burst: bool) -> bool:
        """`rq suspend` honoured within a second; checked at most once a second, not per batch."""
        if time.monotonic() < self._suspension_checked + 1.0:
            return False
        try:
            suspended = is_suspended(self.connection, self)
        except REDIS_DOWN:
            return self._redis_down_pause("suspension check")
        self._suspension_checked = 0.0 if suspended else time.monotonic()
        if suspended:
            if burst:
                self.stop_signals = self.stop_signals or 1
            time.sleep(1)
        return suspended

    def _maintain(self) -> None:
        """RQ's worker key and worker registry; never RQ's job-registry cleanup, which would
        race ``recover`` and unpickle or call what hostile jobs name."""
        try:
            self.heartbeat()
            for queue in self.queues:
                clean_worker_registry(queue)
        except REDIS_DOWN as exc:
            log.warning("redis unreachable; maintenance skipped", error=str(exc))

    def _redis_down_pause(self, what: str) -> bool:
        log.warning("redis unreachable; retrying", step=what, retry_in_s=1.0)
        time.sleep(1.0)
        return True

    def _serve_once(self, block: bool, limit: int) -> int:
        """Claim and run one batch from the first queue with work; returns the jobs taken."""
        for queue in self.queue_names():
            while True:
                claim = self._claim(queue, limit)
                if claim.jobs:
                    self.run_batch(claim)
                    return len(claim.jobs)
                if not claim.dropped:
                    break  # empty; a claim of dropped entries only goes on to the next entries
        if block and not self.stop_signals:
            self._wait_for_work()
        return 0

    def _claim(self, queue: str, limit: int) -> Claim:
        token = self.lifecycle.next_token()
        claim = self.retry_redis("claim", lambda: self.lifecycle.claim(queue, limit, token))
        wait_until = time.monotonic() + self.settings.max_batch_wait_ms / 1000.0
        while claim.jobs and len(claim.jobs) < limit and time.monotonic() < wait_until and not self.stop_signals:
            time.sleep(0.001)
            more = self.retry_redis("claim", lambda: self.lifecycle.claim(queue, limit - len(claim.jobs), token))
            claim.jobs += more.jobs
            claim.dropped += more.dropped
        for entry, why in claim.dropped:
            log.warning("dropped a queue entry that names no runnable job", queue=queue, entry=entry, reason=why)
        return claim

    def _wait_for_work(self) -> None:
        """Block until a queue has an entry, without taking it: BLMOVE of a list onto itself,
        tail to tail, leaves it as it was, so a kill here can lose nothing."""
        keys = [q.key for q in self.queues]
        try:
            if len(keys) == 1:
                self.connection.blmove(keys[0], keys[0], IDLE_BLOCK_S, "RIGHT", "RIGHT")
            else:
                time.sleep(0.02)
        except REDIS_DOWN:
            self._redis_down_pause("wait for jobs")

    # -- one batch --------------------------------------------------------------------------
    def run_batch(self, claim: Claim) -> None:
        """Parse every claimed job, run the valid ones through one pipeline call, write every
        outcome in one script call. A job that cannot be read fails alone, with its reason."""
        queue, token = claim.queue, claim.token
        s = self.settings
        started = time.time()
        self.lease = (queue, token, tuple(j.id for j in claim.jobs), started, started + s.job_timeout)
        self.pulse.set("busy", now=False)  # shown on the next beat: no extra round trip per batch
        faults.reached("after_claim")
        outcomes: dict[str, Outcome] = {}
        chat_jobs: list[ChatJob] = []
        requests: dict[str, Any] = {}
        for claimed in claim.jobs:
            try:
                job = parse(claimed, queue, s.job_timeout, s.result_ttl, s.failure_ttl, s.max_job_bytes)
            except JobRejected as exc:
                outcomes[claimed.id] = failure(claimed.id, {}, s.failure_ttl, exc.error())
                continue
            chat_jobs.append(job)
            requests[job.id] = job.request
        faults.reached("after_prepare")
        try:
            for job, answer in zip(chat_jobs, self._compute(chat_jobs), strict=True):
                outcomes[job.id] = (
                    failure(job.id, job.meta, job.failure_ttl, answer)
                    if isinstance(answer, ChatError)
                    else Outcome(job.id, True, job.result_ttl, answer)
                )
        except Interrupted:  # a stop request outlived the drain: hand the computing jobs back
            handed = self.retry_redis("release", lambda: self.lifecycle.release(queue, token, list(requests)))
            log.warning("drain timeout or forced stop: handed unfinished jobs back to the queue", job_ids=handed)
        faults.reached("mid_batch")
        ordered = [outcomes[j.id] for j in claim.jobs if j.id in outcomes]
        written = self.retry_redis("finish", lambda: self.lifecycle.finish(queue, token, ordered)) if ordered else []
        faults.reached("after_finish")
        self.lease = (queue, "", (), 0.0, 0.0)
        self.batch_sizes.append(len(chat_jobs))
        for outcome, state in zip(ordered, written, strict=True):
            self._record(outcome, state, requests.get(outcome.id), len(chat_jobs))
        self.pulse.set("draining" if self.stop_signals else "ready", now=bool(self.stop_signals))

    def _compute(self, chat_jobs: list[ChatJob]) -> list[dict | ChatError]:
        """Answers for the jobs, under one deadline: the longest of their own timeouts (each at
        most LVM_JOB_TIMEOUT), so a job with a short timeout cannot shorten its batch-mates'.
        A job answered after its own timeout ends ``timeout`` all the same."""
        if not chat_jobs:
            return []
        assert self.runtime is not None
        deadline = max(job.timeout for job in chat_jobs)
        queue, token, ids, started, _ = self.lease
        self.lease = (queue, token, ids, started, started + deadline)
        try:
            with self.alarm.deadline(deadline):
                answers = self.runtime.handle_batch([(j.request, j.enqueued_at, j.started_at) for j in chat_jobs])
        except Interrupted as exc:
            if exc.reason == "stop":
                raise
            message = f"the batch ran past its deadline of {deadline} s (job timeout, at most LVM_JOB_TIMEOUT)"
            return [ChatError(error="timeout", message=message + "; computing stopped")] * len(chat_jobs)
        elapsed = time.time() - started
        out: list[dict | ChatError] = []
        for job, answer in zip(chat_jobs, answers, strict=True):
            if isinstance(answer, RequestRejected):
                out.append(answer.error)
            elif isinstance(answer, BaseException):
                out.append(ChatError(error="internal", message=f"{type(answer).__name__}: {answer}"))
            elif elapsed > job.timeout:
                out.append(ChatError(error="timeout", message=f"answered after {elapsed:.1f} s, past the "
                                     f"job's own timeout of {job.timeout} s"))  # fmt: skip
            else:
                out.append(answer)
        return out

    def _record(self, outcome: Outcome, state: str, request: Any, batch_size: int) -> None:
        """One log event per job, counters and metrics. ``state`` is what finish did."""
        if state == "stale":
            log.warning("discarded a result: the job was recovered while this worker was cut off", job_id=outcome.id)
            return
        conversation = request.get("conversation_id") if isinstance(request, dict) else None
        if outcome.ok:
            self.jobs_done += 1
            result = outcome.value
            log.info("job", job_id=outcome.id, conversation_id=result["conversation_id"], model=result["model"],
                     outcome="finished", batch_size=result["batch_size"], cache_hits=result["cache_hits"],
                     **result["latency_breakdown"])  # fmt: skip
        else:
            self.jobs_failed += 1
            error = (outcome.meta or {}).get("error", {})
            conversation = conversation if isinstance(conversation, str) else None
            log.info("job", job_id=outcome.id, conversation_id=conversation, model=self.model_name,
                     outcome="failed", error=error.get("error"), reason=error.get("message"))  # fmt: skip
        if self.metrics is not None:
            self.metrics.observe(outcome.value if outcome.ok else None, batch_size)

    # -- Redis outages ------------------------------------------------------------------------
    def retry_redis(self, what: str, step: Callable[[], Any]) -> Any:
        """The worker's one retry policy: run ``step``, backing off while Redis is unreachable.

        Every step it wraps is a lifecycle script that is safe to repeat (finish and release
        check the token; a repeated claim only takes other jobs), so results computed during an
        outage are written once Redis is back. A forced stop ends the wait (GiveUp): leased jobs
        then return to the queue through recovery when their lease runs out.
        """
        delay = 0.1
        while True:
            try:
                return step()
            except REDIS_DOWN as exc:
                if self.stop_signals > 1 or (self.alarm.stop_at is not None and time.monotonic() > self.alarm.stop_at):
                    raise GiveUp(what) from exc
                log.warning("redis unreachable; retrying", step=what, retry_in_s=round(delay, 2), error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_DOWN as exc:
            log.warning("redis unreachable; worker heartbeat skipped", error=str(exc))

    # -- shutdown -----------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT. Only sets state: the first asks for a drain (finish the batch within
        LVM_DRAIN_SECONDS, then exit 0), the second for a stop now. Logging, Redis writes and
        the hand-back happen on the main loop; a handler that logged could deadlock on the
        logger's lock if the signal landed while the main thread held it."""
        self.stop_signals += 1
        self.alarm.stop_within(self.settings.drain_seconds if self.stop_signals == 1 else 0.0)

    def teardown(self) -> None:
        """On the way out: hand back any jobs still leased (a stop mid-batch), then drop the
        heartbeat so the worker leaves `lvmq health`."""
        if self.stop_signals:
            log.info("stopped on request", worker=self.name, signals=self.stop_signals)
        self.pulse.stop(delete=False)
        queue, token, ids, _, _ = self.lease
        try:
            if ids:
                handed = self.lifecycle.release(queue, token, list(ids))
                log.warning("handed unfinished jobs back to the queue", job_ids=handed)
        except REDIS_DOWN as exc:
            log.warning("redis unreachable at shutdown; unfinished jobs await recovery", error=str(exc))
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            log.warning("redis unreachable at shutdown", error=str(exc))
        finally:
            self.pulse.stop(delete=True)


def failure(job_id: str, meta: dict, ttl: int, error: ChatError) -> Outcome:
    """A failed outcome: the structured error in ``meta.error``, its text as RQ's exc_string."""
    return Outcome(
        job_id, False, ttl, f"{error.error}: {error.message}", {**meta, "error": error.model_dump(mode="json")}
    )

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
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker_registration import clean_worker_registry

from config import Settings, load_settings
from config.connections import unavailable
from config.logs import configure_logging, get_logger
from producer.schema import ChatError
from worker import faults
from worker.deadline import Alarm, Interrupted
from worker.heartbeat import Heartbeat
from worker.jobdata import ChatJob, JobRejected, parse
from worker.lifecycle import Claim, Lifecycle, Outcome
from worker.runtime import RequestRejected, Runtime

log = get_logger("lvmq.worker")
IDLE_BLOCK_S = 1  # longest a blocked claim waits before the loop looks at signals and maintenance
MAINTENANCE_S = 60


@dataclass(frozen=True)
class Lease:
    """A batch this worker holds: claimed, computing, or awaiting its finish write."""

    queue: str
    token: str
    ids: tuple[str, ...]
    started: float
    deadline: float = 0.0


@dataclass
class Batch:
    claim: Claim
    chat_jobs: list[ChatJob] = field(default_factory=list)
    requests: dict[str, Any] = field(default_factory=dict)  # job id -> its request, for the log
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def ordered(self) -> list[Outcome]:
        return [self.outcomes[j.id] for j in self.claim.jobs if j.id in self.outcomes]


class GiveUp(Exception):
    """A forced stop ended a wait for Redis; the leased jobs are left for recovery."""


def default_name() -> str:
    """Unique across hosts and restarts: host, pid and 32 random bits (two pods may share a pid,
    and a restarted container reuses its host name and often its pid)."""
    return f"{socket.gethostname()[:40]}.{os.getpid()}.{os.urandom(4).hex()}"


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
        # Batches in hand (computing, and the next one claimed ahead), keyed by token. The dict
        # is replaced whole under a lock, so the heartbeat thread reads it without one and
        # renews exactly these leases.
        self.leases: dict[str, Lease] = {}
        self._leases_lock = threading.Lock()
        self.computing: Lease | None = None
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvm-io")
        self.pending: tuple[Batch, Future[list[str]]] | None = None  # the batch whose finish is in flight
        self.stop_signals = 0  # set by the signal handler; everything else reads it
        self.crashed = False
        self._suspension_checked = 0.0
        self.alarm = Alarm()
        self.runtime: Runtime | None = None
        self.prefetch = False  # claim ahead; decided once the device is known (load)
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
        self.prefetch = settings.prefetch == "on" or (settings.prefetch == "auto" and self.runtime.device != "cpu")
        log.info(
            "worker ready",
            worker=self.name,
            model=self.model_name,
            checkpoint=self.runtime.checkpoint,
            model_version=self.runtime.model_version,
            device=self.runtime.device,
            encoder_dtype=self.runtime.encoder_dtype,
            bank_search=self.runtime.bank_search,
            prefetch=self.prefetch,
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
        busy = self.computing
        info: dict[str, Any] = {
            "worker": self.name,
            "incarnation": self.lifecycle.incarnation,
            "model": self.model_name,
            "model_version": rt.model_version if rt else None,
            "checkpoint": str(self.settings.models.get(self.model_name, "")),
            "device": rt.device if rt else self.settings.device,
            "encoder_dtype": rt.encoder_dtype if rt else None,
            "bank_search": rt.bank_search if rt else None,
            "forward": rt.forward if rt else None,
            "queues": self.queue_names(),
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "current_job": {"id": busy.ids[0], "jobs": len(busy.ids), "running_s": round(time.time() - busy.started, 3)}
            if busy and busy.ids
            else None,
            "busy_deadline_at": busy.deadline if busy else None,
            "latency_p50_ms": rt.p50_ms() if rt else None,
            "max_batch": self.settings.max_batch,
            "prefetch": self.prefetch,
            "last_batch_size": self.batch_sizes[-1] if self.batch_sizes else None,
            "mean_batch_size": round(sum(self.batch_sizes) / len(self.batch_sizes), 2) if self.batch_sizes else None,
        }
        if self.stop_signals and self.pulse.status in ("ready", "busy"):
            info["status"] = "draining"
        return info

    def _on_beat(self, connection: Redis) -> None:
        """Heartbeat thread: renew this worker's leases, then recover other workers' orphans."""
        leases = self.leases
        held = {token: list(lease.ids) for token, lease in leases.items()}
        lost = self.lifecycle.renew(self.queue_names(), held, connection=connection)
        if lost:
            log.warning("lost the lease of running jobs; their results will be discarded", job_ids=lost)
        for name in self.queue_names():
            for job_id, action, owner in self.lifecycle.recover(
                name, list(leases), self.settings.failure_ttl, connection=connection
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
        claim: Claim | None = None
        try:
            while not self.stop_signals:
                if time.monotonic() >= next_maintenance:
                    self._maintain()
                    next_maintenance = time.monotonic() + MAINTENANCE_S
                if claim is None:
                    if self._suspended(burst):
                        continue
                    claim = self._take(self._limit(max_jobs, done))
                if claim is None:
                    self._settle()
                    if burst or (max_idle_time is not None and time.monotonic() - idle_since > max_idle_time):
                        break
                    self._wait_for_work()
                    continue
                done += len(claim.jobs)
                idle_since = time.monotonic()
                more = max_jobs is None or done < max_jobs
                claim = self.run_batch(claim, prefetch=self._limit(max_jobs, done) if more else 0)
                if not more:
                    break
            self._settle()
        except GiveUp:
            pass
        except BaseException:
            # A bug, not a stop: leave the leased jobs to recovery, which counts a rerun, rather
            # than hand them back for free and crash-loop on a job that kills workers.
            self.crashed = True
            raise
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
        except RedisError as exc:
            if not unavailable(exc):
                raise
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
        except RedisError as exc:
            if not unavailable(exc):
                raise
            log.warning("redis unreachable; maintenance skipped", error=str(exc))

    def _redis_down_pause(self, what: str) -> bool:
        log.warning("redis unreachable; retrying", step=what, retry_in_s=1.0)
        time.sleep(1.0)
        return True

    def _take(self, limit: int) -> Claim | None:
        """Claim a batch from the first queue with work, or None if all are empty."""
        for queue in self.queue_names():
            while not self.stop_signals:
                claim = self._claim(queue, limit)
                if claim.jobs:
                    return claim
                if not claim.dropped:
                    break  # empty; a claim of dropped entries only goes on to the next entries
        return None

    def _claim(self, queue: str, limit: int) -> Claim:
        token = self.lifecycle.next_token()
        self._hold(Lease(queue, token, (), time.time()))  # renewed from the first beat, ids or not
        claim = self.retry_redis("claim", lambda: self.lifecycle.claim(queue, limit, token))
        wait_until = time.monotonic() + self.settings.max_batch_wait_ms / 1000.0
        while claim.jobs and len(claim.jobs) < limit and time.monotonic() < wait_until and not self.stop_signals:
            time.sleep(0.001)
            more = self.retry_redis("claim", lambda: self.lifecycle.claim(queue, limit - len(claim.jobs), token))
            claim.jobs += more.jobs
            claim.dropped += more.dropped
        for entry, why in claim.dropped:
            log.warning("dropped a queue entry that names no runnable job", queue=queue, entry=entry, reason=why)
        if claim.jobs:
            self._hold(Lease(queue, token, tuple(j.id for j in claim.jobs), time.time()))
            faults.reached("after_claim")
        else:
            self._drop(token)
        return claim

    def _hold(self, lease: Lease) -> None:
        with self._leases_lock:
            self.leases = {**self.leases, lease.token: lease}

    def _drop(self, token: str) -> None:
        with self._leases_lock:
            self.leases = {t: lease for t, lease in self.leases.items() if t != token}

    def _wait_for_work(self) -> None:
        """Block until a queue has an entry, without taking it: BLMOVE of a list onto itself,
        tail to tail, leaves it as it was, so a kill here can lose nothing."""
        keys = [q.key for q in self.queues]
        try:
            if len(keys) == 1:
                self.connection.blmove(keys[0], keys[0], IDLE_BLOCK_S, "RIGHT", "RIGHT")
            else:
                time.sleep(0.02)
        except RedisError as exc:
            if not unavailable(exc):
                raise
            self._redis_down_pause("wait for jobs")

    # -- one batch ---------------------------------------------------------------------------
    def run_batch(self, claim: Claim, prefetch: int = 0) -> Claim | None:
        """Parse every claimed job, run the valid ones through one pipeline call, write every
        outcome in one script call; returns the next batch, claimed while this one computed.

        Redis work overlaps the computation on one I/O thread: the next claim runs while this
        batch computes (``LVM_PREFETCH``), and this batch's finish runs while the next one is
        prepared and computed. A job that cannot be read fails alone, with its reason.
        """
        batch = self._prepare(claim)
        ahead: Future[Claim | None] | None = None
        # Claim ahead only under load (more than one job in hand): for a lone request the extra
        # claim only competes with its computation (on CPU, idle e2e was ~2 ms lower without it).
        if prefetch and self.prefetch and len(claim.jobs) > 1 and not self.stop_signals:
            ahead = self.io.submit(self._take, prefetch)
        try:
            self._compute(batch)
        except Interrupted:  # a stop request outlived the drain: hand this batch and the next back
            self._hand_back(batch.claim.queue, batch.claim.token, list(batch.requests))
            if ahead is not None and (nxt := ahead.result()) is not None:
                self._hand_back(nxt.queue, nxt.token, [j.id for j in nxt.jobs])
            ahead = None
        faults.reached("mid_batch")
        self._settle()
        self.pending = (batch, self.io.submit(self._finish, batch))
        return ahead.result() if ahead is not None else None

    def _prepare(self, claim: Claim) -> Batch:
        s = self.settings
        batch = Batch(claim)
        for claimed in claim.jobs:
            try:
                job = parse(claimed, claim.queue, s.job_timeout, s.result_ttl, s.failure_ttl, s.max_job_bytes)
            except JobRejected as exc:
                batch.outcomes[claimed.id] = failure(claimed.id, {}, s.failure_ttl, exc.error())
                continue
            batch.chat_jobs.append(job)
            batch.requests[job.id] = job.request
        faults.reached("after_prepare")
        return batch

    def _finish(self, batch: Batch) -> list[str]:
        """I/O thread: write the batch's outcomes; then it no longer holds their leases."""
        ordered = batch.ordered()
        written = self.retry_redis(
            "finish", lambda: self.lifecycle.finish(batch.claim.queue, batch.claim.token, ordered)
        )
        faults.reached("after_finish")
        self._drop(batch.claim.token)
        return written

    def _settle(self) -> None:
        """Wait for the last batch's finish and log its outcomes, one event per job."""
        if self.pending is None:
            return
        batch, written = self.pending
        self.pending = None
        for outcome, state in zip(batch.ordered(), written.result(), strict=True):
            self._record(outcome, state, batch.requests.get(outcome.id), len(batch.chat_jobs))
        self.pulse.set("draining" if self.stop_signals else "ready", now=bool(self.stop_signals))

    def _hand_back(self, queue: str, token: str, ids: list[str]) -> None:
        handed = self.retry_redis("release", lambda: self.lifecycle.release(queue, token, ids)) if ids else []
        log.warning("drain timeout or forced stop: handed unfinished jobs back to the queue", job_ids=handed)

    def _compute(self, batch: Batch) -> None:
        """Answers for the batch's chat jobs, under one deadline: the longest of their own
        timeouts (each at most LVM_JOB_TIMEOUT), so a job with a short timeout cannot shorten
        its batch-mates'. A job answered after its own timeout ends ``timeout`` all the same."""
        self.batch_sizes.append(len(batch.chat_jobs))
        if not batch.chat_jobs:
            return
        assert self.runtime is not None
        jobs = batch.chat_jobs
        deadline = max(job.timeout for job in jobs)
        started = time.time()
        self.computing = Lease(
            batch.claim.queue, batch.claim.token, tuple(j.id for j in jobs), started, started + deadline
        )
        self.pulse.set("busy", now=False)  # shown on the next beat: no extra round trip per batch
        try:
            with self.alarm.deadline(deadline):
                answers = self.runtime.handle_batch([(j.request, j.enqueued_at, j.started_at) for j in jobs])
        except Interrupted as exc:
            if exc.reason == "stop":
                raise
            message = f"the batch ran past its deadline of {deadline} s (job timeout, at most LVM_JOB_TIMEOUT)"
            answers = [ChatError(error="timeout", message=message + "; computing stopped")] * len(jobs)
        finally:
            self.computing = None
        elapsed = time.time() - started
        for job, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, RequestRejected):
                answer = answer.error
            elif isinstance(answer, BaseException):
                answer = ChatError(error="internal", message=f"{type(answer).__name__}: {answer}")
            elif not isinstance(answer, ChatError) and elapsed > job.timeout:
                answer = ChatError(error="timeout", message=f"answered after {elapsed:.1f} s, past the "
                                   f"job's own timeout of {job.timeout} s")  # fmt: skip
            batch.outcomes[job.id] = (
                failure(job.id, job.meta, job.failure_ttl, answer)
                if isinstance(answer, ChatError)
                else Outcome(job.id, True, job.result_ttl, answer)
            )

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
            except RedisError as exc:
                if not unavailable(exc):  # a failover's NOREPLICAS / READONLY count as unavailable
                    raise
                if self.stop_signals > 1 or (self.alarm.stop_at is not None and time.monotonic() > self.alarm.stop_at):
                    raise GiveUp(what) from exc
                log.warning("redis unreachable; retrying", step=what, retry_in_s=round(delay, 2), error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except RedisError as exc:
            if not unavailable(exc):
                raise
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
        self.io.shutdown(wait=True)
        try:
            for lease in [] if self.crashed else self.leases.values():
                if lease.ids:
                    handed = self.lifecycle.release(lease.queue, lease.token, list(lease.ids))
                    log.warning("handed unfinished jobs back to the queue", job_ids=handed)
        except RedisError as exc:
            if not unavailable(exc):
                raise
            log.warning("redis unreachable at shutdown; unfinished jobs await recovery", error=str(exc))
        try:
            super().teardown()
        except RedisError as exc:
            if not unavailable(exc):
                raise
            log.warning("redis unreachable at shutdown", error=str(exc))
        finally:
            self.pulse.stop(delete=True)


def failure(job_id: str, meta: dict, ttl: int, error: ChatError) -> Outcome:
    """A failed outcome: the structured error in ``meta.error``, its text as RQ's exc_string."""
    return Outcome(
        job_id, False, ttl, f"{error.error}: {error.message}", {**meta, "error": error.model_dump(mode="json")}
    )

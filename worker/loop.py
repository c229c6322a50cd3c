"""The batch loop: claim a batch, compute it, write its outcomes; claim the next one ahead.

The pipeline runs on the main thread; Redis work overlaps it on one I/O thread: the next claim
runs while this batch computes (``LVM_PREFETCH``), and this batch's finish runs while the next
one is prepared and computed. Every step that touches a job's state is a lifecycle script
(worker/lifecycle.py); every wait on Redis goes through ``retry_redis``, the worker's one retry
policy. A job that cannot be read or answered fails alone, with its reason.

The RQ adapter (worker/worker.py) drives this loop and owns signals; the lease book
(worker/leases.py) says what the heartbeat thread renews.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings, tracing
from config.connections import unavailable
from config.logs import get_logger
from wire import keys
from wire.results import failure_meta
from wire.schema import ChatError
from worker import faults
from worker.deadline import Alarm, Interrupted
from worker.heartbeat import Heartbeat
from worker.jobdata import ChatJob, JobExpired, JobRejected, parse, request_id
from worker.leases import LeaseBook
from worker.lifecycle import Claim, Lifecycle, Outcome
from worker.runtime import RequestRejected, Runtime
from worker.tracing import BatchTracer

log = get_logger("lvmq.worker")
IDLE_BLOCK_S = 1  # longest a blocked claim waits before the loop looks at signals and maintenance
# A claim that took nothing from a queue holding work it may not take (jobs held for a light lane;
# on a light lane, only a flooding tenant's): BLMOVE would answer at once. An 'all' worker polls:
# it holds work only while a light lane is about to take it. At 5 ms the poll was a light job's
# largest wait on a 2-core CPU (queue wait p99 10 ms beside a flood, against 3 alone); at 2 ms, 6.
HELD_POLL_S = 0.002
# A light lane blocks on its queues' wake lists instead (claim.lua, light lanes): beside a flood it
# would otherwise poll for as long as the flood lasts, 500 claims/s costing it 0.08 of a core and
# Redis 0.03 on a 2-core host, taken from the workers serving the flood. The wake is a hint; this
# is how long a lost one can delay light work (and the lane's stamp stays live: well under 5 s).
LANE_WAKE_S = 0.1
# Batch jobs per batch while interactive work is served, on CPU: `lvmq bench priority` on a 2-core
# host kept an interactive job within 1.7-1.9x its idle p99 behind 10,000 batch jobs at 8 (0.78-0.86
# of the batch throughput), 1.36x at 4 (0.54). Off on CUDA and MPS until measured there: a whole batch
# of 32 cost about 3 single requests on an H200 (18 ms against 5.7), against 8 on that CPU.
CPU_YIELD_JOBS = 8


def yield_jobs_for(setting: int, device: str) -> int:
    """LVM_BATCH_YIELD_JOBS for a worker on ``device``: -1 is CPU_YIELD_JOBS on CPU, 0 elsewhere."""
    if setting >= 0:
        return setting
    return CPU_YIELD_JOBS if device == "cpu" else 0


@dataclass
class Batch:
    """A claim on its way through the loop: the jobs that parsed, and every job's outcome."""

    claim: Claim
    chat_jobs: list[ChatJob] = field(default_factory=list)
    requests: dict[str, Any] = field(default_factory=dict)  # job id -> its request, for the log
    request_ids: dict[str, str] = field(default_factory=dict)  # job id -> its lvm_request_id, for the log
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    spans: dict[str, Any] | None = None  # job id -> its open trace span, when tracing is on

    def ordered(self) -> list[Outcome]:
        return [self.outcomes[j.id] for j in self.claim.jobs if j.id in self.outcomes]


class GiveUp(Exception):
    """A forced stop ended a wait for Redis; the leased jobs are left for recovery."""


def redis_down_pause(what: str) -> bool:
    log.warning("redis unreachable; retrying", step=what, retry_in_s=1.0)
    time.sleep(1.0)
    return True


class BatchLoop:
    def __init__(
        self,
        settings: Settings,
        connection: Redis,
        lifecycle: Lifecycle,
        runtime: Runtime,
        queue_names: list[str],
        pulse: Heartbeat,
        leases: LeaseBook,
        prefetch: bool,
        metrics: Any = None,
    ):
        self.settings = settings
        self.connection = connection
        self.lifecycle = lifecycle
        self.runtime = runtime
        self.queue_names = queue_names
        self.pulse = pulse
        self.leases = leases
        self.prefetch = prefetch  # claim ahead while computing
        self.metrics = metrics
        self.alarm = Alarm()
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvm-io")
        self.pending: tuple[Batch, Future[list[str]]] | None = None  # the batch whose finish is in flight
        self.all_paused = False  # every queue's last claim found it paused by an operator
        self.held = False  # the last claims took nothing from queues holding work for another lane
        self.stop_signals = 0  # SIGTERM/SIGINT count, set by the adapter's handler; everything else reads it
        self.jobs_done = 0
        self.jobs_failed = 0
        self.batch_sizes: deque[int] = deque(maxlen=200)
        self.busy: deque[tuple[int, float]] = deque(maxlen=200)  # (jobs, compute seconds) per batch
        self.debug = settings.log_level == "DEBUG"  # per-job events only then
        otel = tracing.tracer(settings.tracing, "lvmq-worker")
        self.tracer = (
            None if otel is None else BatchTracer(otel, runtime.worker_name, runtime.model_name, runtime.device)
        )

    def take(self, limit: int) -> Claim | None:
        """Claim a batch from the first queue with work, or None if all are empty (or paused)."""
        paused, held = 0, False
        for queue in self.queue_names:
            while not self.stop_signals:
                claim = self._claim(queue, limit)
                if claim.jobs:
                    self.all_paused = self.held = False
                    return claim
                paused += claim.paused
                held = held or claim.held
                if not claim.dropped:
                    break  # empty; a claim of dropped entries only goes on to the next entries
        self.all_paused = paused == len(self.queue_names)
        self.held = held
        return None

    def _claim(self, queue: str, limit: int) -> Claim:
        token = self.lifecycle.next_token()
        self.leases.hold(queue, token)  # renewed from the first beat, ids or not
        claim = self.retry_redis("claim", lambda: self.lifecycle.claim(queue, limit, token))
        wait_until = time.monotonic() + self.settings.max_batch_wait_ms / 1000.0
        while (claim.jobs and len(claim.jobs) < limit and not claim.capped and time.monotonic() < wait_until
               and not self.stop_signals):  # fmt: skip
            time.sleep(0.001)
            want, left = limit - len(claim.jobs), claim.batch_room(self.lifecycle.yield_jobs)
            claim.extend(
                self.retry_redis("claim", lambda want=want, left=left: self.lifecycle.claim(queue, want, token, left))
            )
        for entry, why in claim.dropped:
            log.warning("dropped a queue entry that names no runnable job", queue=queue, entry=entry, reason=why)
        if claim.jobs:
            self.leases.hold(queue, token, tuple(j.id for j in claim.jobs))
            faults.reached("after_claim")
        else:
            self.leases.drop(token)
        return claim

    def wait_for_work(self) -> None:
        """Block until a queue has an entry, without taking it: BLMOVE of a list onto itself,
        tail to tail, leaves it as it was, so a kill here can lose nothing. A light lane beside
        work it may not take blocks on its wake lists: what it pops is a hint, not a job."""
        queue_keys = [keys.queue(q) for q in self.queue_names]
        if self.all_paused:  # its queue holds jobs no claim may take: BLMOVE would answer at once
            time.sleep(IDLE_BLOCK_S)
            return
        if self.held and self.lifecycle.lane != "light":  # work for a light lane, about to be taken
            time.sleep(HELD_POLL_S)
            return
        try:
            if self.held:  # a light lane beside work it may not take: woken when light work comes
                self.connection.blpop([keys.lane_wake(q) for q in self.queue_names], LANE_WAKE_S)
            elif len(queue_keys) == 1:
                self.connection.blmove(queue_keys[0], queue_keys[0], IDLE_BLOCK_S, "RIGHT", "RIGHT")
            else:
                time.sleep(0.02)
        except RedisError as exc:
            if not unavailable(exc):
                raise
            self.drop_idle(exc)
            redis_down_pause("wait for jobs")

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
            ahead = self.io.submit(self.take, prefetch)
        try:
            self._compute(batch)
        except Interrupted:  # a stop request outlived the drain: hand this batch and the next back
            self._hand_back(batch.claim.queue, batch.claim.token, list(batch.requests))
            if ahead is not None and (nxt := ahead.result()) is not None:
                self._hand_back(nxt.queue, nxt.token, [j.id for j in nxt.jobs])
            ahead = None
        faults.reached("mid_batch")
        self.settle()
        self.pending = (batch, self.io.submit(self._finish, batch))
        return ahead.result() if ahead is not None else None

    def _prepare(self, claim: Claim) -> Batch:
        s = self.settings
        batch = Batch(claim)
        for claimed in claim.jobs:
            rid = request_id(claimed.fields.get(keys.REQUEST_ID_FIELD.encode()))
            if rid is not None:
                batch.request_ids[claimed.id] = rid
            try:
                job = parse(claimed, claim.queue, s.job_timeout, s.result_ttl, s.failure_ttl, s.max_job_bytes)
            except (JobRejected, JobExpired) as exc:
                batch.outcomes[claimed.id] = failure(claimed.id, {}, s.failure_ttl, exc.error())
                continue
            except Exception as exc:  # noqa: BLE001 - whatever one hash does, it fails alone
                error = ChatError(error="bad_payload", message=f"job hash unreadable: {type(exc).__name__}")
                log.warning("job hash unreadable", job_id=claimed.id, error=f"{type(exc).__name__}: {exc}"[:300])
                batch.outcomes[claimed.id] = failure(claimed.id, {}, s.failure_ttl, error)
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
        self.leases.drop(batch.claim.token)
        return written

    def settle(self) -> None:
        """Wait for the last batch's finish and log its outcomes: one INFO event per batch (its
        computed job ids among them), one per failed job; each finished job at DEBUG. An INFO
        event per job cost ~20 us of a GPU worker's host time each (`lvmq bench host`)."""
        if self.pending is None:
            return
        batch, written = self.pending
        self.pending = None
        ordered, states = batch.ordered(), written.result()
        for outcome, state in zip(ordered, states, strict=True):
            self._record(outcome, state, batch.requests.get(outcome.id), len(batch.chat_jobs),
                         batch.request_ids.get(outcome.id))  # fmt: skip
        if batch.chat_jobs:
            done = sum(o.ok for o in ordered)
            c = batch.claim  # yielding: batch work came in few while interactive work was served (claim.lua)
            log.info("batch", queue=c.queue, jobs=len(batch.chat_jobs), finished=done, failed=len(ordered) - done,
                     interactive=c.interactive_taken, batch_class=c.batch_taken, yielding=c.yielding,
                     job_ids=[j.id for j in batch.chat_jobs])  # fmt: skip
        if batch.spans and self.tracer is not None:
            self.tracer.written(batch.spans, {o.id: state for o, state in zip(ordered, states, strict=True)})
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
        self.leases.start_computing(batch.claim.queue, batch.claim.token, tuple(j.id for j in jobs), deadline)
        self.pulse.set("busy", now=False)  # shown on the next beat: no extra round trip per batch
        try:
            with self.alarm.deadline(deadline):
                faults.reached("computing")
                answers = self.runtime.handle_batch(jobs)
        except Interrupted as exc:
            if exc.reason == "stop":
                raise
            message = f"the batch ran past its deadline of {deadline} s (job timeout, at most LVM_JOB_TIMEOUT)"
            answers = [ChatError(error="timeout", message=message + "; computing stopped")] * len(jobs)
        finally:
            self.leases.stop_computing()
        ended = time.time()
        elapsed = ended - started
        self.busy.append((len(jobs), elapsed))
        final: list[Any] = []
        for job, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, RequestRejected):
                answer = answer.error
            elif isinstance(answer, BaseException):
                # The exception's text stays in the worker's log: it can hold paths, shapes and
                # other internals that a client has no use for.
                log.error("job failed inside the worker", job_id=job.id, request_id=job.request_id,
                          error=f"{type(answer).__name__}: {answer}")  # fmt: skip
                answer = ChatError(
                    error="internal",
                    message=f"the worker failed on this request "
                    f"({type(answer).__name__}); its log has the details under this job id",
                )
            elif not isinstance(answer, ChatError) and elapsed > job.timeout:
                answer = ChatError(error="timeout", message=f"answered after {elapsed:.1f} s, past the "
                                   f"job's own timeout of {job.timeout} s")  # fmt: skip
            batch.outcomes[job.id] = (
                failure(job.id, job.meta, job.failure_ttl, answer)
                if isinstance(answer, ChatError)
                else Outcome(job.id, True, job.result_ttl, answer)
            )
            final.append(answer)
        if self.tracer is not None:
            outputs, times = self.runtime.last_outputs, (int(started * 1e9), int(ended * 1e9))
            batch.spans = self.tracer.computed(batch.claim.queue, jobs, final, outputs, *times)

    def _record(self, outcome: Outcome, state: str, request: Any, batch_size: int, rid: str | None = None) -> None:
        """Counters, metrics, and a log event for a failed job (a finished one at DEBUG), with the
        job's request id when it has one. ``state`` is what finish did."""
        ids = {"job_id": outcome.id} if rid is None else {"job_id": outcome.id, "request_id": rid}
        if state == "stale":
            log.warning("discarded a result: the job was recovered while this worker was cut off", **ids)
            return
        if state == "canceled":
            log.info("discarded a result: its submitter canceled the job while it ran", **ids)
            return
        conversation = request.get("conversation_id") if isinstance(request, dict) else None
        if outcome.ok:
            self.jobs_done += 1
            result = outcome.value
            if self.debug:
                log.debug("job", **ids, conversation_id=result.get("conversation_id"), model=result["model"],
                          outcome="finished", kind=result.get("kind", "chat"), batch_size=result["batch_size"],
                          cache_hits=result.get("cache_hits"), **result["latency_breakdown"])  # fmt: skip
        else:
            self.jobs_failed += 1
            error = (outcome.meta or {}).get("error", {})
            conversation = conversation if isinstance(conversation, str) else None
            log.info("job", **ids, conversation_id=conversation, model=self.runtime.model_name,
                     outcome="failed", error=error.get("error"), reason=error.get("message"))  # fmt: skip
        if self.metrics is not None:
            self.metrics.observe(outcome.value if outcome.ok else None, batch_size)

    def serve_rate(self) -> float | None:
        """Jobs per second of computing over the last 200 batches: what this worker serves when busy
        (the gateway's admission bound is derived from it). None before the first batch."""
        jobs, seconds = sum(j for j, _ in self.busy), sum(t for _, t in self.busy)
        return round(jobs / seconds, 2) if seconds > 0 else None

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
                self.drop_idle(exc)
                log.warning("redis unreachable; retrying", step=what, retry_in_s=round(delay, 2), error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def drop_idle(self, exc: BaseException) -> None:
        """After a timeout or a broken connection, close the pool's idle connections: they were
        opened the same way and are as likely dead (a partition leaves them half-open), and each
        would cost a full reply timeout to find out. The retry opens a fresh one."""
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            self.connection.connection_pool.disconnect(inuse_connections=False)

    def close(self) -> None:
        self.io.shutdown(wait=True)


def failure(job_id: str, meta: dict, ttl: int, error: ChatError) -> Outcome:
    """A failed outcome: the structured error in ``meta.error``, its text as RQ's exc_string."""
    return Outcome(job_id, False, ttl, f"{error.error}: {error.message}", failure_meta(meta, error))

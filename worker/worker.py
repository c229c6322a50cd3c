"""LVMWorker: the RQ adapter. An RQ SimpleWorker bound to one model on one device.

SimpleWorker runs jobs in its own process: forking after torch has loaded deadlocked on
these machines (libgomp), and CUDA/MPS cannot fork at all. The model, encoder and bank load
once in ``__init__``, so a checkpoint that fails strict loading stops `rq worker` with a
non-zero exit and the loader's message before a single job is taken.

RQ's registration, `rq info`, `rq suspend` and the job statuses producers read all stay. RQ's
per-job dequeue and bookkeeping are replaced: this adapter loads the runtime, owns signals,
suspension and RQ's own maintenance, and drives ``worker.loop.BatchLoop`` (claim, compute,
finish). ``worker.lifecycle`` holds the scripts and the job state diagram; ``worker.leases`` what
the heartbeat thread renews; ``worker.jobdata`` reads hostile job hashes, which fail alone.

Start it with the plain RQ CLI (settings from ``LVM_*`` variables)::

    rq worker -w worker.LVMWorker -S json -c config.rq lvm-lstm

or ``lvmq worker --model lstm --device cpu``.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker_registration import clean_worker_registry

from config import Settings, load_settings
from config.connections import clone, harden, unavailable
from config.logs import configure_logging, get_logger
from config.settings import parse_cpus
from lvm.threads import lower_priority, pin_cpus
from worker.heartbeat import Heartbeat
from worker.leases import Lease, LeaseBook
from worker.lifecycle import Claim, Lifecycle
from worker.loop import BatchLoop, GiveUp, redis_down_pause, yield_jobs_for
from worker.runtime import Runtime

log = get_logger("lvmq.worker")
MAINTENANCE_S = 60
WATCHDOG_EXIT = 3  # the exit status of a worker ended by its watchdog (restart it)


def default_name() -> str:
    """Unique across hosts and restarts: host, pid and 32 random bits (two pods may share a pid,
    and a restarted container reuses its host name and often its pid)."""
    return f"{socket.gethostname()[:40]}.{os.getpid()}.{os.urandom(4).hex()}"


class LVMWorker(SimpleWorker):
    loop: BatchLoop | None = None  # set once the runtime has loaded

    def __init__(self, queues, *args: Any, settings: Settings | None = None, model: str | None = None, **kwargs: Any):
        settings = settings or load_settings()
        pin_cpus(parse_cpus(settings.cpus))  # first: every thread started from here on inherits both
        lower_priority(settings.nice)
        configure_logging(settings.log_level, settings.log_format)
        kwargs["serializer"] = JSONSerializer  # jobs are JSON, never pickle, whatever -S said
        kwargs["name"] = kwargs.get("name") or default_name()
        names = [
            q if isinstance(q, str) else q.name for q in ([queues] if isinstance(queues, (str, Queue)) else queues)
        ]
        connection = kwargs.get("connection")
        queues = [Queue(n, connection=connection, serializer=JSONSerializer) for n in names]
        super().__init__(queues, *args, **kwargs)
        harden(self.connection, settings.redis_socket_timeout)  # after RQ raised the timeout to ~415 s
        self.settings = settings
        self.model_name = self._model_for(names, model or settings.model)
        self.lifecycle = Lifecycle(
            self.connection, self.name, settings.lease_s, settings.max_reruns, settings.max_job_bytes,
            settings.fair_batch_every,
        )  # fmt: skip
        self.leases = LeaseBook()
        self.crashed = False
        self._suspension_checked = 0.0
        self.runtime: Runtime | None = None
        # The heartbeat renews leases on a connection of its own with a short timeout: a main
        # connection stuck on a half-open socket or a long claim never delays a renewal.
        beat_timeout = max(1.0, min(settings.redis_socket_timeout, settings.heartbeat_seconds))
        self.pulse = Heartbeat(
            clone(self.connection, beat_timeout),
            self.name,
            settings.heartbeat_seconds,
            self._heartbeat_info,
            on_beat=self._on_beat,
            on_drain=self._on_drain,
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
        prefetch = settings.prefetch == "on" or (settings.prefetch == "auto" and self.runtime.device != "cpu")
        batch_yield = yield_jobs_for(settings.batch_yield_jobs, self.runtime.device)
        self.lifecycle.set_yield(batch_yield, settings.batch_yield_window_s)
        self.lifecycle.set_lane(settings.lane, settings.light_max_queued)
        self.loop = BatchLoop(
            settings, self.connection, self.lifecycle, self.runtime, names, self.pulse, self.leases, prefetch,
            self._start_metrics(),
        )  # fmt: skip
        log.info(
            "worker ready",
            worker=self.name,
            model=self.model_name,
            checkpoint=self.runtime.checkpoint,
            model_version=self.runtime.model_version,
            device=self.runtime.device,
            encoder_dtype=self.runtime.encoder_dtype,
            bank_search=self.runtime.bank_search,
            prefetch=prefetch,
            batch_yield_jobs=batch_yield,
            lane=settings.lane,
            cpus=settings.cpus or None,
            nice=settings.nice,
            load_seconds=round(self.runtime.load_seconds, 2),
        )
        # Everything loaded so far (torch, transformers, the model, the bank's index) lives as
        # long as the worker: out of the collector's sight, a full collection no longer walks
        # those millions of objects between batches. Collected first: garbage frozen is never freed.
        gc.collect()
        gc.freeze()
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
        rt, loop, busy = self.runtime, self.loop, self.leases.computing
        sizes = loop.batch_sizes if loop else ()
        # Plain fields: Heartbeat.beat validates the whole message (wire.schema.Heartbeat) once, as it writes.
        info: dict[str, Any] = dict(
            worker=self.name,
            incarnation=self.lifecycle.incarnation,
            model=self.model_name,
            model_version=rt.model_version if rt else None,
            load_seconds=round(rt.load_seconds, 2) if rt else None,
            checkpoint=str(self.settings.models.get(self.model_name, "")),
            device=rt.device if rt else self.settings.device,
            encoder_dtype=rt.encoder_dtype if rt else None,
            encoder=rt.encoder_name if rt else None,
            encoder_dim=rt.encoder_dim if rt else None,
            bank_search=rt.bank_search if rt else None,
            forward=rt.forward if rt else None,
            queues=self.queue_names(),
            jobs_done=loop.jobs_done if loop else 0,
            jobs_failed=loop.jobs_failed if loop else 0,
            current_job={"id": busy.ids[0], "jobs": len(busy.ids), "running_s": round(time.time() - busy.started, 3)}
            if busy and busy.ids
            else None,
            busy_deadline_at=busy.deadline if busy else None,
            busy_overdue_s=round(time.time() - busy.deadline, 3) if busy else None,
            latency_p50_ms=rt.p50_ms() if rt else None,
            max_batch=self.settings.max_batch,
            prefetch=loop.prefetch if loop else False,
            lane=self.settings.lane,
            last_batch_size=sizes[-1] if sizes else None,
            mean_batch_size=round(sum(sizes) / len(sizes), 2) if sizes else None,
            serve_rate_per_s=loop.serve_rate() if loop else None,
        )
        if loop and loop.stop_signals and self.pulse.status in ("ready", "busy"):
            info["status"] = "draining"
        return info

    def _on_beat(self, connection: Redis) -> None:
        """Heartbeat thread: renew this worker's leases, then recover other workers' orphans; end
        the process when the main thread is stuck past its batch's deadline plus grace."""
        grace = self.settings.watchdog_grace_seconds
        if (hung := self.leases.overdue(grace)) is not None:
            self._watchdog(hung)
        held = self.leases.ids_by_token(grace)
        lost = self.lifecycle.renew(self.queue_names(), held, connection=connection)
        if lost:
            log.warning("lost the lease of running jobs; their results will be discarded", job_ids=lost)
        for name in self.queue_names():
            for job_id, action, owner in self.lifecycle.recover(
                name, list(held), self.settings.failure_ttl, connection=connection
            ):
                if action != "cleared":
                    log.warning("recovered a job from a silent worker", job_id=job_id, action=action, owner=owner)

    def _watchdog(self, hung: Lease) -> None:
        """The main thread is still computing a batch ``watchdog_grace_seconds`` past its deadline:
        stuck in a C call (CUDA, OpenMP) where SIGALRM cannot interrupt it. Stop renewing, say so
        on the heartbeat, and exit with WATCHDOG_EXIT so that compose or Kubernetes restart the
        worker; peers recover its jobs when their leases run out (a rerun counted)."""
        overdue = round(time.time() - hung.deadline, 1)
        message = f"main thread stuck {overdue} s past its batch deadline; exiting for a restart"
        log.error("watchdog: batch hung past its deadline", job_ids=list(hung.ids), overdue_s=overdue)
        self.pulse.set("error", message)
        os._exit(WATCHDOG_EXIT)

    # -- RQ's work loop, on the batch loop -----------------------------------------------------
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
        assert self.loop is not None
        loop = self.loop
        self.bootstrap(logging_level or "WARNING", date_format, log_format)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        done = 0
        idle_since = time.monotonic()
        next_maintenance = 0.0
        claim: Claim | None = None
        try:
            while not loop.stop_signals:
                if time.monotonic() >= next_maintenance:
                    self._maintain()
                    next_maintenance = time.monotonic() + MAINTENANCE_S
                if claim is None:
                    if self._suspended(burst):
                        continue
                    claim = loop.take(self._limit(max_jobs, done))
                if claim is None:
                    loop.settle()
                    if burst or (max_idle_time is not None and time.monotonic() - idle_since > max_idle_time):
                        break
                    loop.wait_for_work()
                    continue
                done += len(claim.jobs)
                idle_since = time.monotonic()
                more = max_jobs is None or done < max_jobs
                claim = loop.run_batch(claim, prefetch=self._limit(max_jobs, done) if more else 0)
                if not more:
                    break
            loop.settle()
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
            return redis_down_pause("suspension check")
        self._suspension_checked = 0.0 if suspended else time.monotonic()
        if suspended:
            if burst and self.loop is not None:
                self.loop.stop_signals = self.loop.stop_signals or 1
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

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except RedisError as exc:
            if not unavailable(exc):
                raise
            log.warning("redis unreachable; worker heartbeat skipped", error=str(exc))

    # -- shutdown -----------------------------------------------------------------------------
    def unsubscribe(self) -> None:
        """RQ's, with every wait bounded. RQ's pubsub thread (`rq` commands such as shutdown)
        holds a connection of its own; after a partition or a Redis restart it can sit on a
        half-open socket, and RQ's ``stop()`` joins it without a timeout: the worker then hung
        at exit until killed (seen as a non-zero exit in the Redis-restart chaos row). The
        thread is a daemon, so one still stuck after this ends with the process."""
        if not self.pubsub_thread:
            return
        try:
            self.pubsub.unsubscribe()
        except RedisError:
            pass
        self.pubsub_thread.stop(timeout=2)
        try:
            self.pubsub.close()
        except RedisError:
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT. Only sets state: the first asks for a drain (finish the batch within
        LVM_DRAIN_SECONDS, then exit 0), the second for a stop now. Logging, Redis writes and
        the hand-back happen on the main loop; a handler that logged could deadlock on the
        logger's lock if the signal landed while the main thread held it."""
        assert self.loop is not None
        self.loop.stop_signals += 1
        self.loop.alarm.stop_within(self.settings.drain_seconds if self.loop.stop_signals == 1 else 0.0)

    def _on_drain(self, key: str) -> None:
        """Heartbeat thread: an operator asked this worker to drain (drain.lua). The same as a
        first SIGTERM: finish the batch within LVM_DRAIN_SECONDS, claim nothing more, exit 0."""
        log.warning("drain requested by an operator", worker=self.name, key=key)
        if self.loop is None:  # still loading: the loop will see the request at its first beat after
            self.pulse.drain_asked = False
            return
        # Race named here: a drain request and a SIGTERM at once. Both only raise the count from
        # 0 to at least 1 and set the alarm to the drain; a second SIGTERM still means "now".
        if self.loop.stop_signals == 0:
            self.loop.stop_signals = 1
            self.loop.alarm.stop_within(self.settings.drain_seconds)

    def teardown(self) -> None:
        """On the way out: hand back any jobs still leased (a stop mid-batch), then drop the
        heartbeat so the worker leaves `lvmq health`."""
        if self.loop is not None and self.loop.stop_signals:
            log.info("stopped on request", worker=self.name, signals=self.loop.stop_signals)
            # Race named here: a further SIGTERM while the process exits. Python's finalization
            # puts the default action back for signals it handled, so a second SIGTERM landing
            # then killed a worker that was stopping cleanly (exit -15, not 0: make test caught
            # it). A stop is under way: further ones are ignored (SIGKILL still ends it).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.pulse.stop(delete=False)
        if self.loop is not None:
            self.loop.close()
        try:
            for lease in [] if self.crashed else self.leases.held.values():
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

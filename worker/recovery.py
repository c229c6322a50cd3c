"""Recover jobs whose worker died while running them.

A worker that claims a batch puts every job of it in RQ's StartedJobRegistry before running
any. If the worker then dies (SIGKILL, OOM, power), those jobs would sit "started" until
RQ's own abandoned-job cleanup, which waits for the job timeout plus a minute and runs only
every ten minutes. Here, any LVMWorker notices within one heartbeat TTL that a started job's
worker has no heartbeat any more, and:

- re-queues it at the front of its queue, once (``meta["lvm_reruns"]`` counts);
- fails it with that reason if it was already re-run once (a request that kills workers
  must not kill them all).

Whoever removes the registry entry first (ZREM returns 1) acts; other workers skip it.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from producer.schema import HEARTBEAT_PREFIX, ChatError
from worker.logs import get_logger

log = get_logger("lvmq.recovery")
MAX_RERUNS = 1


def recover_orphans(connection: Redis, queues: list[Queue], me: str, in_flight: set[str]) -> list[tuple[str, str]]:
    """Returns [(job_id, "requeued" | "failed")] for what it did.

    ``in_flight`` holds the ids this worker is running now; a job recorded under this worker's
    own name but not in flight was left by an earlier process with the same name.
    """
    actions = []
    for queue in queues:
        registry = StartedJobRegistry(queue.name, connection=connection, serializer=JSONSerializer)
        for raw in connection.zrange(registry.key, 0, -1):
            entry = raw.decode() if isinstance(raw, bytes) else raw
            job_id = entry.split(":", 1)[0]
            if job_id in in_flight:
                continue  # running here, now
            try:
                job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                connection.zrem(registry.key, entry)
                continue
            owner = job.worker_name
            if job.get_status(refresh=False) != JobStatus.STARTED:
                continue
            if owner and owner != me and connection.exists(HEARTBEAT_PREFIX + owner):
                continue  # its worker is alive
            if not connection.zrem(registry.key, entry):
                continue  # another worker got there first
            reruns = int(job.meta.get("lvm_reruns", 0))
            if reruns < MAX_RERUNS:
                job.meta["lvm_reruns"] = reruns + 1
                job.save_meta()
                with connection.pipeline() as pipe:
                    queue.enqueue_job(job, pipeline=pipe, at_front=True)
                    pipe.execute()
                actions.append((job_id, "requeued"))
                log.warning("re-queued a job whose worker died", job_id=job_id, dead_worker=owner)
            else:
                reason = (
                    f"worker {owner} died (heartbeat expired) while running this job, "
                    f"after it had already been re-run {reruns} time(s); not retried again"
                )
                job.meta["error"] = ChatError(error="abandoned", message=reason).model_dump(mode="json")
                job.save_meta()
                with connection.pipeline() as pipe:
                    record_job_failure(job, reason, pipe)
                    pipe.execute()
                actions.append((job_id, "failed"))
                log.warning("failed a job whose worker died again", job_id=job_id, dead_worker=owner)
    return actions

"""The RQ job function producers enqueue by name: ``worker.jobs.chat``.

It runs inside ``worker.LVMWorker`` (a SimpleWorker), which loaded the model once and
registered its runtime here. A failure stores a structured ``ChatError`` in the job's meta
under ``error`` before re-raising, so the job ends FAILED with a reason a caller can read.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from producer.schema import ChatError
from worker.logs import get_logger
from worker.runtime import RequestRejected, Runtime

_runtime: Runtime | None = None
log = get_logger("lvmq.job")


def install(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def record_error(job, error: ChatError) -> None:
    """Store the structured error on the job; best effort, the failure itself is what matters."""
    if job is None:
        return
    try:
        job.meta["error"] = error.model_dump(mode="json", exclude_none=True)
        job.save_meta()
    except Exception:  # noqa: BLE001 - never mask the original failure
        log.warning("could not save error meta", job_id=job.id)


def chat(request: Any) -> dict:
    job = get_current_job()
    job_id = job.id if job else None
    if _runtime is None:
        error = ChatError(
            error="internal",
            message="worker.jobs.chat runs only inside worker.LVMWorker (rq worker -w worker.LVMWorker ...)",
        )
        record_error(job, error)
        raise RuntimeError(error.message)
    try:
        result = _runtime.handle(request, job.enqueued_at if job else None, job.started_at if job else None)
    except RequestRejected as exc:
        record_error(job, exc.error)
        log.info(
            "job",
            job_id=job_id,
            model=_runtime.model_name,
            outcome="rejected",
            error=exc.error.error,
            reason=str(exc),
            conversation_id=_conversation(request),
        )
        raise
    except Exception as exc:
        record_error(job, ChatError(error="internal", message=f"{type(exc).__name__}: {exc}"))
        log.error("job", job_id=job_id, model=_runtime.model_name, outcome="error", exc_info=True)
        raise
    log.info(
        "job",
        job_id=job_id,
        conversation_id=result["conversation_id"],
        model=result["model"],
        outcome="finished",
        batch_size=result["batch_size"],
        **result["latency_breakdown"],
    )
    return result


def _conversation(request: Any) -> str | None:
    return request.get("conversation_id") if isinstance(request, dict) else None


def reject(error: dict) -> None:
    """Run in place of a job whose payload could not be accepted; always fails, with the reason."""
    err = ChatError.model_validate(error)
    record_error(get_current_job(), err)
    log.info(
        "job", job_id=getattr(get_current_job(), "id", None), outcome="rejected", error=err.error, reason=err.message
    )
    raise RequestRejected(err)

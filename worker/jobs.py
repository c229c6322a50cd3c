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


def log_outcome(job, model: str, result: dict | None = None, error: ChatError | None = None) -> None:
    """One event per job: ids, model, latency fields and outcome."""
    request = job.args[0] if job is not None and job.args else None
    if result is not None:
        log.info(
            "job",
            job_id=job.id if job else None,
            conversation_id=result["conversation_id"],
            model=result["model"],
            outcome="finished",
            batch_size=result["batch_size"],
            cache_hits=result["cache_hits"],
            **result["latency_breakdown"],
        )
    else:
        assert error is not None
        log.info(
            "job",
            job_id=job.id if job else None,
            conversation_id=_conversation(request),
            model=model,
            outcome="failed",
            error=error.error,
            reason=error.message,
        )


def chat(request: Any) -> dict:
    """The job function: one request, answered by the worker's loaded runtime.

    LVMWorker runs chat jobs in micro-batches through the same runtime and never calls this
    per job; it runs when a job is performed the plain RQ way inside a process that loaded a
    runtime, and otherwise fails saying where chat jobs belong.
    """
    job = get_current_job()
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
        log_outcome(job, _runtime.model_name, error=exc.error)
        raise
    except Exception as exc:
        error = ChatError(error="internal", message=f"{type(exc).__name__}: {exc}")
        record_error(job, error)
        log_outcome(job, _runtime.model_name, error=error)
        raise
    log_outcome(job, _runtime.model_name, result=result)
    return result


def _conversation(request: Any) -> str | None:
    return request.get("conversation_id") if isinstance(request, dict) else None


def reject(error: dict) -> None:
    """Run in place of a job whose payload could not be accepted; always fails, with the reason."""
    err = ChatError.model_validate(error)
    record_error(get_current_job(), err)
    log_outcome(get_current_job(), "-", error=err)
    raise RequestRejected(err)

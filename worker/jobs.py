"""The function names producers enqueue: ``worker.jobs.chat`` and ``worker.jobs.embed``.

``worker.LVMWorker`` never calls it: it claims chat jobs in batches through
``worker.lifecycle`` and answers them with its loaded runtime. This body runs only when some
other RQ worker performs a chat job, and fails it with a structured reason saying where chat
jobs belong.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from wire.schema import ChatError

WRONG_WORKER = "worker.jobs.chat runs only inside worker.LVMWorker (rq worker -w worker.LVMWorker ...)"


def chat(request: Any) -> dict:
    job = get_current_job()
    if job is not None:
        job.meta["error"] = ChatError(error="internal", message=WRONG_WORKER).model_dump(mode="json")
        job.save_meta()
    raise RuntimeError(WRONG_WORKER)


def embed(request: Any) -> dict:
    """``worker.jobs.embed``: like ``chat``, answered only inside worker.LVMWorker."""
    return chat(request)

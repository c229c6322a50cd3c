"""Errors a producer sees: each says what went wrong and what to do."""

from __future__ import annotations

from wire.schema import ChatError


class LVMQueueError(Exception):
    pass


class ChatFailed(LVMQueueError):
    """The job ended FAILED; ``error`` is the worker's structured reason."""

    def __init__(self, error: ChatError):
        self.error = error
        detail = "; ".join(f"{f['field']}: {f['reason']}" for f in error.fields)
        super().__init__(f"{error.error}: {error.message}" + (f" ({detail})" if detail else ""))


class ChatTimeout(LVMQueueError, TimeoutError):
    pass


class JobNotFound(LVMQueueError, KeyError):
    pass


class RedisUnavailable(LVMQueueError, ConnectionError):
    """Redis did not answer; the message names the URL (password hidden) and what to check."""


class NotReplicated(LVMQueueError):
    """Submitted to the master, but fewer replicas than LVM_PRODUCER_WAIT_REPLICAS confirmed it in
    time: a failover now could lose it. Retrying with the same idempotency key is safe."""

    def __init__(self, message: str, job_ids: list[str]):
        self.job_ids = job_ids
        super().__init__(message)


class Overloaded(LVMQueueError):
    """The model's queue already holds what its workers can serve within the job timeout
    (LVM_MAX_QUEUED): nothing was enqueued for the refused requests. Retry after
    ``retry_after_s``, or with a lighter load. ``job_ids``: per request, its id, or None where refused."""

    def __init__(self, message: str, retry_after_s: int, job_ids: list[str | None]):
        self.retry_after_s, self.job_ids = retry_after_s, job_ids
        super().__init__(message)


class Paused(Overloaded):
    """An operator paused the model's queue (``lvmq ops pause``, the ops page): nothing was
    enqueued; the message carries their reason. A 503 with Retry-After at the gateway."""


class ServerUnsuitable(LVMQueueError):
    """The Redis server cannot do what the settings ask (LVM_PRODUCER_WAIT_AOF on a server older than
    7.2, or without an AOF): nothing was submitted; the message says what to change."""


class RateLimited(LVMQueueError):
    """The caller's token bucket is empty (the gateway's per-key rate): nothing was enqueued.
    Retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(message)

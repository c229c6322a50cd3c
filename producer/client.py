"""ChatClient: what a backend or frontend uses to talk to the LVM workers.

Submit puts a JSON job on ``lvm-<model>``; ``wait`` blocks on RQ's result stream (XREAD
BLOCK), not a sleep loop. redis-py's default 5 s socket timeout breaks blocking reads longer
than that, so waits run on a second connection whose socket timeout covers the wait.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from config import Settings, load_settings
from config.connections import connect as open_redis
from config.connections import unavailable
from config.tracing import producer_span, tracer
from config.urls import safe_url
from producer import protocol
from producer.errors import ChatFailed, ChatTimeout, JobNotFound, RedisUnavailable
from producer.health import read_workers
from producer.protocol import RequestLike
from wire import keys, lua
from wire.embed import EmbedRequest, EmbedResult
from wire.results import error_from
from wire.schema import ChatError, ChatRequest, ChatResult

WAIT_MARGIN_S = 5.0
T = TypeVar("T")


def reaching_redis(method: Callable[..., T]) -> Callable[..., T]:
    """Turn redis-py's connection errors into RedisUnavailable, after the configured retries."""

    @functools.wraps(method)
    def wrapper(self: ChatClient, *args: Any, **kwargs: Any) -> T:
        attempts = self.settings.producer_retries + 1
        for attempt in range(attempts):
            try:
                return method(self, *args, **kwargs)
            except RedisError as exc:
                if not unavailable(exc):  # unreachable, or mid-failover (NOREPLICAS, READONLY)
                    raise
                if attempt + 1 == attempts:
                    if isinstance(exc, OutOfMemoryError):
                        raise RedisUnavailable(
                            f"Redis at {safe_url(self.url)} is at maxmemory and refuses new jobs ({exc}); nothing "
                            "was enqueued: retry later (with the same idempotency key), or give Redis more memory"
                        ) from exc
                    raise RedisUnavailable(
                        f"cannot reach Redis at {safe_url(self.url)} ({exc}); is it running? "
                        "check LVM_REDIS_URL (retries: LVM_PRODUCER_RETRIES)"
                    ) from exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    return wrapper


def connect(url: str, socket_timeout: float | None = 5.0) -> Redis:
    """Redis for any LVM_REDIS_URL, Sentinel included (config.connections)."""
    return open_redis(url, socket_timeout=socket_timeout)


class ChatClient:
    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.url = redis_url or self.settings.redis_url
        self.redis = connect(self.url, socket_timeout=protocol.socket_timeout(self.settings))
        self._blocking: Redis | None = None
        self._blocking_timeout = 0.0
        self._submit = self.redis.register_script(protocol.script(limited=False))
        self.bounds = protocol.Bounds(self.settings)
        self._server_checked = False  # LVM_PRODUCER_WAIT_AOF: the server checked once, at the first submit
        self._cancel = self.redis.register_script(lua.source("cancel"))
        self.tracer = tracer(self.settings.tracing, "lvmq-producer")  # None: tracing off

    # -- submitting ------------------------------------------------------------------------
    def queue(self, model: str) -> Queue:
        return Queue(self.settings.queue_name(model), connection=self.redis, serializer=JSONSerializer)

    def submit(
        self,
        request: RequestLike,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
        priority: str | None = None,
        share: protocol.Share | None = None,
    ) -> str:
        """Validate here (fail fast, before Redis), enqueue, return the job id.

        With ``idempotency_key``, a repeated submit (a retry after a timeout whose first try
        may have reached Redis) returns the first job's id instead of enqueuing again, for
        queue_ttl + result_ttl seconds. ``deadline_s`` (default LVM_JOB_TIMEOUT): a job still
        queued that long after its submit fails ``expired`` without being computed, and one
        computed later is due by then. ``priority`` (interactive or batch; default
        LVM_PRODUCER_PRIORITY): batch yields to interactive within LVM_PRODUCER_TENANT's share;
        ``share`` names another tenant (a backend submitting for its own customers), its weight
        and queued cap. ``Overloaded`` when the queue is at its admission bound, ``RateLimited``
        when the tenant holds its cap.
        """
        keys = None if idempotency_key is None else [idempotency_key]
        return self.submit_many([request], keys, deadline_s, priority, share)[0]

    def submit_many(
        self,
        requests: Iterable[RequestLike],
        idempotency_keys: Sequence[str] | None = None,
        deadline_s: float | None = None,
        priority: str | None = None,
        share: protocol.Share | None = None,
    ) -> list[str]:
        """Enqueue many requests, possibly for several models, in one round trip. Each is one
        atomic admit + submit.lua call: a retry after an ambiguous failure never enqueues twice."""
        if share is None:
            share = protocol.Share(self.settings.producer_tenant, priority or self.settings.producer_priority)
        requests = [r if isinstance(r, ChatRequest | EmbedRequest) else ChatRequest.model_validate(r) for r in requests]
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(requests)
        if len(keys) != len(requests):
            raise ValueError("give one idempotency key per request")
        deadline = protocol.deadline(self.settings, deadline_s)
        pairs = list(zip(requests, keys, strict=True))
        if self.tracer is None:
            return self._enqueue(
                [protocol.call(self.settings, self.redis, r, k, share=share) for r, k in pairs], deadline
            )
        queues = {self.settings.queue_name(r.model) for r in requests}
        with producer_span(self.tracer, ",".join(sorted(queues)), len(requests)) as (span, trace):
            calls = [protocol.call(self.settings, self.redis, r, k, trace=trace, share=share) for r, k in pairs]
            ids = self._enqueue(calls, deadline)
            span.set_attribute("messaging.message.id", ids[0] if len(ids) == 1 else ",".join(ids))
            return ids

    @reaching_redis
    def _enqueue(self, calls: list[protocol.Call], deadline_s: float) -> list[str]:
        if self.settings.producer_wait_aof and not self._server_checked:
            protocol.check_server(self.settings, self.redis.info("everything"))
            self._server_checked = True
        stale = self.bounds.stale([c.queue for c in calls])
        if stale:
            self.bounds.update(read_workers(self.redis), stale)
        submit = protocol.Submit(self.settings, calls, self.bounds, deadline_s)
        if not submit.pipelined:
            [(script_keys, args)] = submit.script_calls()
            return submit.ids([self._submit(keys=script_keys, args=args)])
        with self.redis.pipeline(transaction=False) as pipe:
            for script_keys, args in submit.script_calls():
                self._submit(keys=script_keys, args=args, client=pipe)
            if submit.wait is not None:
                pipe.execute_command(*submit.wait_command())  # same connection, same round trip
            return submit.ids(pipe.execute())

    @reaching_redis
    def cancel(self, job_id: str) -> str:
        """Cancel a job in one atomic step: a queued one leaves its queue and is never computed, a
        running one's result is discarded; it ends ``canceled``. Returns 'canceled' (now or
        before), or the status it had ended with ('finished', 'failed', ...); JobNotFound when absent."""
        reply = self._cancel(keys=[keys.job(job_id), keys.EVENTS], args=protocol.cancel_args(self.settings, job_id))
        outcome, status = (x.decode() if isinstance(x, bytes) else x for x in reply)
        if outcome == "absent":
            self._job(job_id)  # raises JobNotFound with the reasons
        return "canceled" if outcome in ("canceled", "already") else status

    # -- reading ---------------------------------------------------------------------------
    def _job(self, job_id: str, connection: Redis | None = None) -> Job:
        try:
            return Job.fetch(job_id, connection=connection or self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            raise JobNotFound(
                f"job {job_id} not found: never submitted, expired after waiting queue_ttl "
                f"({self.settings.queue_ttl} s) with no worker, or its result outlived result_ttl"
            ) from None

    @reaching_redis
    def status(self, job_id: str) -> str:
        """queued | started | finished | failed | ... (RQ's JobStatus), or 'unknown'."""
        try:
            return self._job(job_id).get_status().value
        except JobNotFound:
            return "unknown"

    @reaching_redis
    def result(self, job_id: str) -> ChatResult | None:
        """Non-blocking: the result, None while pending; raises ChatFailed for a failed job."""
        job = self._job(job_id)
        return self._outcome(job, _latest_result(job))

    @reaching_redis
    def wait(self, job_id: str, timeout: float = 30.0) -> ChatResult:
        """Block until the job ends (on RQ's result stream) or ``timeout`` seconds pass."""
        if self._blocking is None or self._blocking_timeout < timeout + WAIT_MARGIN_S:
            # The socket timeout outlasts XREAD BLOCK by a margin: long enough for the blocking
            # read, short enough that a half-open connection raises instead of hanging forever.
            self._blocking_timeout = timeout + WAIT_MARGIN_S
            self._blocking = connect(self.url, socket_timeout=self._blocking_timeout)
        # The result stream needs only the id: skip fetching the job hash on the happy path.
        job = Job(job_id, connection=self._blocking, serializer=JSONSerializer)
        res = _latest_result(job, timeout=max(1, int(round(timeout))) if timeout > 0 else 0)
        if res is None and not self._blocking.exists(job.key):
            self._job(job_id)  # raises JobNotFound with the reasons
        outcome = self._outcome(job, res)
        if outcome is None:
            raise ChatTimeout(
                f"no result for job {job_id} after {timeout:.0f} s (status {self.status(job_id)}); "
                "is a worker running for its queue? check `lvmq health`"
            )
        return outcome

    def chat(self, messages: str | Sequence[str], timeout: float = 30.0, **fields: Any) -> ChatResult:
        """Submit one chat and wait for its answer."""
        if isinstance(messages, str):
            messages = [messages]
        return self.wait(self.submit({"messages": list(messages), **fields}), timeout=timeout)

    def embed_request(self, texts: str | Sequence[str], dimensions: int | None = None) -> EmbedRequest:
        """An embed job's request: ``texts`` for LVM_EMBEDDING_MODEL, through LVM_EMBEDDING_VIA's queue."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        s = self.settings
        return EmbedRequest(input=texts, model=s.embedding_via, encoder=s.embedding_model,
                            dimensions=dimensions)  # fmt: skip

    def embed(self, texts: str | Sequence[str], timeout: float = 30.0, **submit: Any) -> list[list[float]]:
        """Sentence vectors for ``texts`` (unit rows, float32 values), computed by a worker's encoder
        through the queue: admission, fair share, deadlines and cancel as for a chat. ``submit``:
        ``submit``'s keywords (idempotency_key, deadline_s, priority, share)."""
        result = self.wait(self.submit(self.embed_request(texts), **submit), timeout=timeout)
        if not isinstance(result, EmbedResult):
            raise ChatFailed(ChatError(error="internal", message="an embed job answered with a chat result"))
        return result.floats()

    @reaching_redis
    def error(self, job_id: str) -> ChatError | None:
        job = self._job(job_id)
        return self._error(job) if job.get_status() == JobStatus.FAILED else None

    def _outcome(self, job: Job, res) -> ChatResult | None:
        if res is _UNREADABLE:  # the job's result key is not a stream: its job hash says why it failed
            if self._job(job.id).get_status() == JobStatus.FAILED:
                raise ChatFailed(self._error(job))
            return None
        if res is None:
            return None
        if res.type == res.Type.SUCCESSFUL:
            value = res.return_value
            if isinstance(value, dict) and value.get("kind") == "embedding":
                return EmbedResult.model_validate(value)  # type: ignore[return-value]
            return ChatResult.model_validate(value)
        raise ChatFailed(self._error(job, res.exc_string))

    def _error(self, job: Job, exc_string: str | None = None) -> ChatError:
        job = self._job(job.id)
        meta = job.get_meta(refresh=False) if hasattr(job, "get_meta") else job.meta
        if exc_string is None and not (isinstance(meta, dict) and meta.get("error") is not None):
            res = _latest_result(job)
            exc_string = None if res is None or res is _UNREADABLE else res.exc_string
        return error_from(meta, exc_string).model_copy(update={"job_id": job.id})


_UNREADABLE = object()  # a result key of another type than a stream


def _latest_result(job: Job, timeout: int = 0) -> Any:
    """RQ's latest result of ``job``; ``_UNREADABLE`` when its result key holds another type
    (any program can write Redis; the worker then fails the job with the reason in its meta)."""
    try:
        return job.latest_result(timeout=timeout)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return _UNREADABLE

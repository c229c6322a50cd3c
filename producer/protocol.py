"""The producer's protocol, written once: what a producer sends Redis to enqueue (or cancel) chats,
and what the replies mean. No I/O of its own: ``ChatClient`` (sync redis-py), the gateway (asyncio redis-py)
and ``lvmq chat`` (through ChatClient) run the same calls on their own connections.

One round trip, a ``Submit``::

    per request   EVALSHA submit.lua behind admit.lua   (the gateway: behind rate_limit.lua too)
                  KEYS  job hash, queue list, rq:queues, idempotency key   (+ the caller's bucket)
                  ARGV  (rate, burst,) bound, deadline ms, job id, queue ttl, idempotency ttl, fields...
    then          WAIT numreplicas timeout_ms             (only with LVM_PRODUCER_WAIT_REPLICAS > 0)

``Submit.ids(replies)`` turns the replies into job ids, or raises the refusal that says why not:
``RateLimited`` (the caller's token bucket), ``Overloaded`` (the queue's admission bound; nothing
was written for the refused requests) or ``NotReplicated`` (queued, but fewer replicas confirmed
it than asked: retrying with the same idempotency key answers the same job, never a second one).

Race named here: an ambiguous reply. The job id is fixed before the round trip, so a retry after
a timeout whose first try reached Redis names the same job; submit.lua answers a repeat with the
first job's id (and admit.lua answers repeats even at the bound), so nothing runs twice.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from config import Settings
from producer.errors import NotReplicated, Overloaded, Paused, RateLimited, ServerUnsuitable
from producer.health import admission
from wire import fairness, keys, lua, tracecontext
from wire.embed import EMBED_FUNCTION, EmbedRequest
from wire.schema import JOB_FUNCTION, ChatRequest, rq_time

RequestLike = ChatRequest | EmbedRequest | dict[str, Any]  # a dict is a chat's


def script(limited: bool) -> str:
    """The Lua text of one submit: admit.lua around submit.lua, behind the caller's token bucket
    when ``limited`` (the gateway's)."""
    return lua.guarded("submit", "rate_limit", "admit") if limited else lua.guarded("submit", "admit")


@dataclass(frozen=True)
class Limit:
    """The caller's token bucket (wire/scripts/rate_limit.lua), taken in the submit's own step."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True)
class Share:
    """Whom a job counts against for fair share (docs/gateway.md, "Fair share"), and how: its
    tenant, priority class and weight, and the tenant's cap on queued jobs, absolute
    (``max_queued``) or as a fraction of the queue's admission bound (``queue_share``); 0: none."""

    tenant: str = "default"
    priority: str = "interactive"
    weight: int = 1
    max_queued: int = 0
    queue_share: float = 0.0

    def __post_init__(self) -> None:
        if not keys.TENANT.match(self.tenant):
            raise ValueError(f"tenant {self.tenant!r}: 1-{keys.TENANT_MAX} letters, digits, '.', '_' or '-'")
        if self.priority not in keys.CLASSES:
            raise ValueError(f"priority {self.priority!r}: one of {', '.join(keys.CLASSES)}")
        if not 1 <= self.weight <= 1000:
            raise ValueError(f"weight {self.weight}: 1-1000")

    def cap(self, bound: int) -> int:
        """The tenant's queued cap under a queue bound of ``bound`` (0 = none)."""
        if self.max_queued > 0:
            return self.max_queued
        return max(1, math.ceil(bound * self.queue_share)) if bound > 0 and self.queue_share > 0 else 0

    def limit(self) -> str:
        """Which cap this is, for a refusal's message."""
        if self.max_queued > 0:
            return "the key's max_queued"
        return f"{self.queue_share:g} of the queue's bound (LVM_GATEWAY_KEY_QUEUE_SHARE)"


@dataclass(frozen=True)
class Call:
    """submit.lua's own KEYS and ARGV for one request, the queue it goes to, and its fair share."""

    keys: list[str]
    args: list[Any]
    queue: str
    model: str
    share: Share = Share()
    cost: int = 1


def call(
    settings: Settings,
    connection: Any,
    request: RequestLike,
    idempotency_key: str | None = None,
    owner: str | None = None,
    trace: Mapping[str, str] | None = None,
    share: Share | None = None,
    request_id: str | None = None,
) -> Call:
    """One request as submit.lua's KEYS and ARGV: RQ's own job hash, with its id fixed here (see
    the race above). ``owner`` (the gateway's API-key hash) is stored as the job's lvm_owner,
    ``trace`` (the submitting span's W3C headers, config.tracing) as its lvm_trace,
    ``request_id`` (the gateway's X-Request-ID) as its lvm_request_id; ``share``
    (default: LVM_PRODUCER_TENANT and LVM_PRODUCER_PRIORITY) says whose share it is taken from.
    ``connection`` is only handed to RQ's Job, which does no I/O while it is built."""
    req = request if isinstance(request, ChatRequest | EmbedRequest) else ChatRequest.model_validate(request)
    queue = settings.queue_name(req.model)
    s = settings
    embed = isinstance(req, EmbedRequest)
    job = Job.create(
        EMBED_FUNCTION if embed else JOB_FUNCTION,
        args=[req.model_dump(mode="json")],
        connection=connection,
        serializer=JSONSerializer,
        timeout=s.job_timeout,
        result_ttl=s.result_ttl,
        failure_ttl=s.failure_ttl,
        ttl=s.queue_ttl,
        description=f"embed model={req.model} texts={len(req.input)}"
        if embed
        else f"chat model={req.model} conversation={req.conversation_id or '-'}",
        origin=queue,
        status=JobStatus.QUEUED,
    )
    job.enqueued_at = now()
    # RQ's own fields, less the empty ones (callbacks, worker_name, started_at ...: a worker's
    # claim read and deleted them for every job), and ``data`` as RQ's own JSON left uncompressed:
    # RQ and the worker read it so too, and a chat request is too small for zlib to pay for itself.
    record = job.to_dict()
    record["data"] = job.data
    fields = [part for name, value in record.items() if value != "" for part in (name, value)]
    if owner is not None:
        fields += ["lvm_owner", owner]
    if request_id is not None and keys.REQUEST_ID.match(request_id):
        fields += [keys.REQUEST_ID_FIELD, request_id]
    carried = tracecontext.encode(trace) if trace else None
    if carried is not None:
        fields += [tracecontext.FIELD, carried]
    if idempotency_key is None:
        idem_key, idem_ttl = job.key, 0
    else:
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        idem_key, idem_ttl = keys.idempotency(queue, digest), s.queue_ttl + max(s.result_ttl, s.failure_ttl)
    script_keys = [job.key, keys.queue(queue), keys.QUEUES, idem_key]
    share = share or Share(s.producer_tenant, s.producer_priority)
    cost = fairness.embed_cost(len(req.input)) if embed else fairness.cost(req.decode_steps, req.response_sentences)
    return Call(script_keys, [job.id, s.queue_ttl, idem_ttl, *fields], queue, req.model, share, cost)


PAUSED_RETRY_S = 30  # Retry-After for a submit to a paused queue: pauses are for minutes, not ms
SOCKET_TIMEOUT_S = 5.0  # a submit connection's socket timeout, unless its WAIT needs longer


def socket_timeout(settings: Settings) -> float:
    """The socket timeout of a connection that submits: 5 s, or the WAIT that follows a submit
    (LVM_PRODUCER_WAIT_MS) plus 2 s. Race named here: a WAIT longer than the socket timeout. The
    socket gave up first and the caller heard "Redis is unreachable" (the gateway: 503 without a
    job id) about a job that was queued, and resubmitted it."""
    if not settings.producer_wait_replicas:
        return SOCKET_TIMEOUT_S
    return max(SOCKET_TIMEOUT_S, settings.producer_wait_ms / 1000 + 2.0)


def deadline(settings: Settings, seconds: float | None) -> float:
    """Seconds from the submit the answer is due: LVM_JOB_TIMEOUT, or less. A job still queued
    then fails ``expired`` uncomputed (admit.lua stamps it on Redis's clock)."""
    value = float(settings.job_timeout) if seconds is None else seconds
    if not 0 < value <= settings.job_timeout:
        raise ValueError(f"the deadline must be seconds in (0, {settings.job_timeout}] (LVM_JOB_TIMEOUT)")
    return value


def retry_after(depth: int, bound: int, rate: float) -> int:
    """Seconds until a queue at ``depth`` is back under ``bound`` at ``rate`` jobs/s (at least 1)."""
    return max(1, math.ceil((depth - bound + 1) / rate)) if rate > 0 else 5


def rate_limited(rate: float, burst: int, wait_ms: Any, what: str = "submits") -> RateLimited:
    """The refusal of a token bucket (rate_limit.lua's ``{0, ms until a token}``)."""
    retry = max(1, -(-int(wait_ms) // 1000))
    return RateLimited(f"over {rate:g} {what}/s (burst {burst}) for this key; retry in {retry} s", retry)


class Bounds:
    """Each queue's admission bound and its workers' serving rate, read from their heartbeats at
    most every REFRESH_S (producer.health.admission); LVM_MAX_QUEUED >= 0 fixes the bound. The
    one cache of the bound: ChatClient refreshes a stale queue before its submit, the gateway
    refreshes all its queues from one background task."""

    REFRESH_S = 2.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self._read: dict[str, tuple[float, int, float]] = {}  # queue -> (read at, bound, rate)

    def get(self, queue: str) -> tuple[int, float]:
        """(bound, rate); a bound of 0 is no bound (LVM_MAX_QUEUED 0). Before its first read a
        queue's bound is the floor: admission never fails open."""
        if self.settings.max_queued >= 0:
            return self.settings.max_queued, 0.0
        _, bound, rate = self._read.get(queue, (0.0, self.settings.admission_floor, 0.0))
        return bound, rate

    def limit(self, rate: float) -> str:
        """Which limit a bound read with its workers' ``rate`` is, for a refusal's message."""
        if self.settings.max_queued >= 0:
            return "LVM_MAX_QUEUED"
        if rate <= 0:
            return "LVM_ADMISSION_FLOOR: no serving worker has measured its rate; is one running? `lvmq health`"
        return "derived: what its workers serve within 80% of LVM_JOB_TIMEOUT (LVM_MAX_QUEUED -1)"

    def stale(self, queues: list[str]) -> list[str]:
        """The queues whose bound must be read again before use."""
        if self.settings.max_queued >= 0:
            return []
        limit = time.monotonic() - self.REFRESH_S
        return [q for q in dict.fromkeys(queues) if self._read.get(q, (0.0,))[0] <= limit]

    def update(self, workers: list[dict[str, Any]], queues: list[str]) -> None:
        """Derive ``queues``' bounds from the heartbeats ``workers`` (producer.health.read_workers)."""
        s, read_at = self.settings, time.monotonic()
        for queue in queues:
            bound, rate = admission(workers, queue, s.job_timeout, -1, s.max_batch, s.admission_floor)
            self._read[queue] = (read_at, bound, rate)


def check_server(settings: Settings, info: Mapping[str, Any]) -> None:
    """Refuse LVM_PRODUCER_WAIT_AOF on a server that cannot honour it (``info``: INFO server and
    persistence): WAITAOF is Redis 7.2's, and counts an AOF that must be on."""
    if not settings.producer_wait_aof:
        return
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    if parts < (7, 2):
        raise ServerUnsuitable(
            f"LVM_PRODUCER_WAIT_AOF needs Redis 7.2 or newer (WAITAOF), and this server is {version}: upgrade it, "
            "or turn the setting off (LVM_PRODUCER_WAIT_REPLICAS alone confirms with WAIT, in replicas' memory)"
        )
    if str(info.get("aof_enabled", "0")) != "1":
        raise ServerUnsuitable(
            "LVM_PRODUCER_WAIT_AOF needs the server's append-only file: set appendonly yes on every node"
        )


@dataclass
class Submit:
    """One round trip of submits: ``script_calls()`` says what to run, ``wait`` whether a WAIT
    follows on the same connection, ``ids(replies)`` what the replies mean."""

    settings: Settings
    calls: list[Call]
    bounds: Bounds
    deadline_s: float
    limit: Limit | None = None
    used: list[tuple[int, float]] = field(init=False)  # each call's (bound, rate), read once

    def __post_init__(self) -> None:
        # Read once, here: the arguments and a refusal's message must name the same bound, even
        # when the gateway's refresh task replaces it between the two.
        self.used = [self.bounds.get(c.queue) for c in self.calls]

    @property
    def wait(self) -> tuple[int, int] | None:
        """WAIT's (numreplicas, timeout ms), or None: LVM_PRODUCER_WAIT_REPLICAS is 0 (and no WAITAOF)."""
        wanted = self.settings.producer_wait_replicas
        return (wanted, self.settings.producer_wait_ms) if wanted or self.settings.producer_wait_aof else None

    def wait_command(self) -> tuple[Any, ...]:
        """The confirmation that follows the submits on the same connection: WAIT, or WAITAOF 1 N
        with LVM_PRODUCER_WAIT_AOF (check_server says first whether the server can)."""
        wanted, timeout = self.wait  # type: ignore[misc]
        return ("WAITAOF", 1, wanted, timeout) if self.settings.producer_wait_aof else ("WAIT", wanted, timeout)

    @property
    def pipelined(self) -> bool:
        """False for one call and no WAIT: one EVALSHA, since a pipeline adds a SCRIPT EXISTS per call."""
        return len(self.calls) > 1 or self.wait is not None

    def script_calls(self) -> list[tuple[list[str], list[Any]]]:
        """(KEYS, ARGV) of each call of ``script(self.limit is not None)``, in order."""
        deadline_ms = int(self.deadline_s * 1000)
        minute = int(time.time() // 60)
        out = []
        for c, (bound, _) in zip(self.calls, self.used, strict=True):
            sh = c.share
            index = [keys.fair_list(c.queue, sh.tenant, "interactive"), keys.fair_list(c.queue, sh.tenant, "batch"),
                     keys.fair_ring(c.queue), keys.fair_state(c.queue), keys.paused(c.queue),
                     keys.stats(c.queue, minute, "refused"), keys.lane_wake(c.queue)]  # fmt: skip
            script_keys = [*c.keys, *index]
            args = [bound, deadline_ms, sh.tenant, keys.CLASSES[sh.priority], sh.weight, sh.cap(bound), c.cost, *c.args]
            if self.limit is not None:
                script_keys, args = [*script_keys, self.limit.key], [self.limit.rate, self.limit.burst, *args]
            out.append((script_keys, args))
        return out

    def ids(self, replies: list[Any]) -> list[str]:
        """The job ids, one per call, from the replies of ``script_calls()`` (and WAIT's, last)."""
        n = len(self.calls)
        answers = list(replies[:n])
        if self.limit is not None:
            refused = next((r for r in answers if not int(r[0])), None)
            if refused is not None:
                raise rate_limited(self.limit.rate, self.limit.burst, refused[1])
            answers = [r[1] for r in answers]
        admitted = [int(r[0]) == 1 for r in answers]
        ids = [_text(r[1]) if ok else None for r, ok in zip(answers, admitted, strict=True)]
        paused = next((i for i, r in enumerate(answers) if int(r[0]) == 3), None)
        if paused is not None:
            raise Paused(
                f"model {self.calls[paused].model}'s queue is paused by an operator "
                f"({_text(answers[paused][1])[:200]}): not enqueued; retry in {PAUSED_RETRY_S} s",
                PAUSED_RETRY_S,
                ids,  # type: ignore[arg-type]
            )
        capped = next((i for i, r in enumerate(answers) if int(r[0]) == 2), None)
        if capped is not None:
            held, c, (bound, rate) = int(answers[capped][1]), self.calls[capped], self.used[capped]
            cap = c.share.cap(bound)
            retry = retry_after(held, cap, rate)
            raise RateLimited(
                f"tenant {c.share.tenant} holds {held} queued jobs for model {c.model}, its cap is {cap} "
                f"({c.share.limit()}); retry in {retry} s",
                retry,
            )
        if not all(admitted):
            i = admitted.index(False)
            depth, (bound, rate) = int(answers[i][1]), self.used[i]
            retry = retry_after(depth, bound, rate)
            refused_part = f"{ids.count(None)} of {n} refused: " if n > 1 else ""
            raise Overloaded(
                f"{refused_part}model {self.calls[i].model}'s queue holds {depth} jobs, its bound is {bound} "
                f"({self.bounds.limit(rate)}); retry in {retry} s",
                retry,
                ids,
            )
        if self.wait is not None:
            confirmed = replies[-1]
            # WAITAOF answers [numlocal, numreplicas], WAIT numreplicas
            aof = isinstance(confirmed, list)
            local, replicas = (int(confirmed[0]), int(confirmed[1])) if aof else (1, int(confirmed))
            if local < 1 or replicas < self.wait[0]:
                what = "fsynced it" if self.settings.producer_wait_aof else "confirmed the submit"
                disk = "" if local else "; the master's own AOF had not fsynced it"
                raise NotReplicated(
                    f"{replicas} of {self.wait[0]} replicas {what} within {self.wait[1]} ms "
                    f"(LVM_PRODUCER_WAIT_REPLICAS){disk}: it is queued on the master but a failover could lose it; "
                    "retry with the same idempotency key",
                    ids,  # type: ignore[arg-type]
                )
        return ids  # type: ignore[return-value]


def cancel_args(settings: Settings, job_id: str, owner: str = "") -> list[Any]:
    """ARGV of cancel.lua (KEYS: the job hash, the event stream). ``owner``: the caller's owner ids,
    comma-separated (all of them: during a secret rotation its jobs carry any), '' for any job."""
    from rq.registry import CanceledJobRegistry

    return [job_id, owner, rq_time(), settings.failure_ttl, keys.RESULTS_PREFIX, keys.QUEUE_PREFIX,
            keys.leases(""), keys.started(""), CanceledJobRegistry.key_template.format(""),
            keys.FAIR_PREFIX]  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value

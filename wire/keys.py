"""Every Redis key lvm-queue reads or writes, named once.

RQ's own keys (``rq:*``) keep RQ's layout, so `rq info`, RQ's CLI and raw producers in any
language see ordinary RQ jobs; lvm-queue's additions live under ``lvm:*``. The job-id rule is
here too, in its Python and Lua spellings side by side: the claim script, the gateway and the
client must agree on it.
"""

from __future__ import annotations

import re

# --- RQ's keys -----------------------------------------------------------------------------
JOB_PREFIX = "rq:job:"  # a job's hash
QUEUE_PREFIX = "rq:queue:"  # a queue's list of job ids, oldest first
QUEUES = "rq:queues"  # the set of every queue's key (RQ's registry of queues)
RESULTS_PREFIX = "rq:results:"  # a job's result stream
WORKER_PREFIX = "rq:worker:"  # RQ's worker hash

# --- lvm-queue's keys ----------------------------------------------------------------------
HEARTBEAT_PREFIX = "lvm:heartbeat:"  # a worker's health: JSON wire.schema.Heartbeat, TTL 3 periods
WORKERS = "lvm:workers"  # zset: worker name -> its last beat (Redis ms); health reads it, never SCAN
WORKERS_MAX = 10_000  # the most workers a health read looks at
ALIVE = "lvm:alive"  # zset: worker incarnation -> last renew (Redis ms); recovery reads it
STATS_PREFIX = "lvm:stats:"  # per-minute counters: lvm:stats:<queue>:<unix minute>:<finished|failed|refused>
STATS_TTL_S = 3600  # how long a per-minute counter is kept
IDEMPOTENCY_PREFIX = "lvm:idem:"  # lvm:idem:<queue>:<sha256 of the key> -> the first job's id
RATE_PREFIX = "lvm:gateway:rate:"  # the gateway's token bucket per API-key owner
# Fair share (docs/gateway.md, "Fair share"): per queue, each tenant's queued ids per class,
# the ring of tenants with work, and the round robin's state. An index beside the queue list,
# which still holds every queued id (the depth `rq info`, KEDA and Prometheus read).
FAIR_PREFIX = "lvm:fair:"
CONVERSATION_PREFIX = "lvm:conv:v2:"  # lvm:conv:v2:<encoder slug>:<dim>:<id>: cached sentence vectors (worker)
# Every change of a job's state after submit appends {job, status} here, in the same Lua step as
# the change itself: one stream that a gateway process reads with one blocking XREAD and fans out
# to its many waiting clients. Trimmed approximately to EVENTS_MAXLEN entries.
EVENTS = "lvm:events"
EVENTS_MAXLEN = 10000

# --- job ids ---------------------------------------------------------------------------------
JOB_ID_MAX = 128
JOB_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{JOB_ID_MAX}}}$")
JOB_ID_LUA_CLASS = "%w_%-"  # the same characters as a Lua pattern class (Redis runs Lua in the C locale)


def job(job_id: str) -> str:
    return JOB_PREFIX + job_id


def queue(name: str) -> str:
    return QUEUE_PREFIX + name


def results(job_id: str) -> str:
    return RESULTS_PREFIX + job_id


def heartbeat(worker: str) -> str:
    return HEARTBEAT_PREFIX + worker


def rq_worker(name: str) -> str:
    return WORKER_PREFIX + name


def leases(queue_name: str) -> str:
    """zset of ``<job id>:<token>`` -> lease deadline (Redis ms): the worker lifecycle's own."""
    return f"lvm:leases:{queue_name}"


# RQ's started-registry score lies this far past the lease, so that RQ's own abandoned-job cleanup
# never races the lifecycle's recover.
WIP_GRACE_S = 86400


def started(queue_name: str) -> str:
    """RQ's started registry, so `rq info` counts running jobs (member ``<id>:<token>``)."""
    return f"rq:wip:{queue_name}"


def finished(queue_name: str) -> str:
    return f"rq:finished:{queue_name}"


def failed(queue_name: str) -> str:
    return f"rq:failed:{queue_name}"


def stats(queue_name: str, minute: int, outcome: str) -> str:
    return f"{STATS_PREFIX}{queue_name}:{minute}:{outcome}"


def idempotency(queue_name: str, digest: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{queue_name}:{digest}"


def rate(owner: str) -> str:
    return RATE_PREFIX + owner


WAITS_PREFIX = "lvm:gateway:waits:"  # zset per API-key owner: its open waits, shared by every gateway process


def waits(owner: str) -> str:
    return WAITS_PREFIX + owner


# --- request ids --------------------------------------------------------------------------
# A caller's X-Request-ID (or one the gateway made), carried on the job as lvm_request_id so one id
# follows a chat from the frontend to the worker's log line; what a log line or header may carry.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")
REQUEST_ID_FIELD = "lvm_request_id"
REPLAY_OF_FIELD = "lvm_replay_of"  # a replayed job's link to the failed job it was replayed from (producer/ops.py)


# --- fair share ------------------------------------------------------------------------------
TENANT_MAX = 64
TENANT = re.compile(rf"^[A-Za-z0-9._-]{{1,{TENANT_MAX}}}$")  # admit.lua checks the same
CLASSES = {"interactive": "i", "batch": "b"}  # a priority class -> its one-letter suffix


def fair_lists(queue_name: str) -> str:
    """The prefix of a queue's per-tenant lists: ``<prefix><tenant>:<i|b>`` (scripts build them)."""
    return f"{FAIR_PREFIX}{queue_name}:q:"


def fair_list(queue_name: str, tenant: str, priority: str) -> str:
    return f"{fair_lists(queue_name)}{tenant}:{CLASSES[priority]}"


def fair_ring(queue_name: str) -> str:
    """list: the tenants with queued jobs, in round-robin order (the head's turn is running)."""
    return f"{FAIR_PREFIX}{queue_name}:ring"


def fair_state(queue_name: str) -> str:
    """hash: ``d:<tenant>`` deficit, ``w:<tenant>`` weight, ``s:<tenant>`` interactive picks since
    its last batch pick, ``turn`` the tenant whose turn has had its quantum, ``interactive_at`` when
    a claim last took an interactive job (ms, Redis's clock: batch work yields while it is recent)."""
    return f"{FAIR_PREFIX}{queue_name}:state"


# A light lane's stamp in the fair state ('light_at') is live this long (claim.lua): a lane claims
# at least every second (its idle block), then computes.
LIGHT_LIVE_MS = 5000


def lane_wake(queue_name: str) -> str:
    """list: at most one token, pushed where light work appears (admit.lua, claim.lua), so a light
    lane with nothing to take blocks on it instead of polling (worker/loop.py). A hint: expiring,
    and a lost one costs the lane's fallback poll."""
    return f"{FAIR_PREFIX}{queue_name}:wake"


# --- Operations (the ops page and `lvmq ops`) -------------------------------------------------
AUDIT = "lvm:audit"  # stream: every operator action, who took it and what it did (wire/scripts/audit.lua)
AUDIT_MAXLEN = 100_000
DRAIN_TTL_S = 3600  # a drain request no worker picked up (its worker gone) lapses


def paused(queue_name: str) -> str:
    """hash ``reason``, ``by``, ``at``: while it exists, workers claim nothing from the queue and
    submits are refused with the reason (claim.lua, admit.lua)."""
    return f"lvm:paused:{queue_name}"


def drain(worker: str) -> str:
    """string: the operator who asked ``worker`` to drain (finish its batch, stop claiming, exit)."""
    return f"lvm:drain:{worker}"

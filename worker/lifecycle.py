"""The job lifecycle: every change of a job's state is one Lua script, so one atomic Redis step.

The scripts are files in wire/scripts/ (one per arrow below, KEYS and ARGV at the top of each);
submit.lua is the entry edge, run by producers and the gateway. This module binds them to one
worker incarnation.

::

                 claim (fair pick + lease + started, one script)
    QUEUED ───────────────────────────────────────────────▶ STARTED(token, lease)
      ▲  ▲                                                    │   │   │
      │  │ release (drain timeout / forced stop: hand back)   │   │   │ renew (heartbeat thread):
      │  └────────────────────────────────────────────────────┘   │   │ lease := now + lease_s,
      │                                                           │   │ only while the token owns it
      │ recover (lease expired, owner silent, reruns < max)       │   │
      └───────────────────────────────────────────────────────────┘   │
                                                                      │ finish (token must still own it)
          recover (lease expired, owner silent, reruns = max) ──┐     ▼
                                                      FAILED(abandoned)   FINISHED | FAILED(reason)

A claimed job is never in neither the queue nor a registry: the claim script takes the id and
writes the lease in one step. Which ids: deficit round robin over the tenants with queued jobs
(fair share, docs/gateway.md; a worker with LVM_LANE=light takes only light tenants' interactive
jobs, and the others leave those to it while it is live); each queued id is in the queue list
(the depth RQ and KEDA read) and, when admit.lua queued it, in its tenant's list, and every
script that moves a queued job moves both. The lease lives in ``lvm:leases:<queue>`` (member
``<id>:<token>``, score = lease deadline in Redis server milliseconds); the same member sits in
RQ's started registry (``rq:wip:<queue>``) so `rq info` counts it, with a score a day later than
the lease so that RQ's own abandoned-job cleanup never races ours.

The fencing token is ``<incarnation>-<claim counter>``: the incarnation is random per worker
process. Finish writes only where the job's ``lvm_token`` is still the caller's token, so a
worker cut off from Redis longer than its lease learns that its batch was recovered and discards
its result: one job, at most one terminal outcome. Each worker's liveness is the score of its
incarnation in ``lvm:alive``, written by renew with Redis's clock (no host clock skew).

Races named here, each closed by doing the step inside one script:
- kill between pop and registration (RQ's intermediate list): claim pops and leases together;
- two workers recovering the same job: recover re-reads the lease inside the script;
- a late owner finishing a recovered job: finish compares the token inside the script;
- an id pushed twice: claim drops an id whose job is already started or ended;
- a job canceled (or taken) between its tenant's list and the queue list: claim takes an id
  from a tenant's list only if removing it from the queue list succeeds in the same step;
- an ambiguous reply (connection lost after Redis ran a script): finish and release are
  idempotent for the same token; jobs of an unanswered claim are owned by this incarnation but
  never renewed, so this worker's own recover pass puts them back (without counting a rerun).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from wire import fairness, keys, lua
from wire.results import encode_failure, encode_result
from wire.schema import rq_time

STATS_TTL_S = keys.STATS_TTL_S
MAX_HISTORY_CHARS = 2000

# Fields RQ acts on that a chat job never needs: callbacks (imported and called by RQ's
# cleanup), dependencies, repeats, retries, webhooks (HTTP requests from the worker) and rate
# limits. Claim strips them before anything can act on them and reports which were set.
ACTED_ON_FIELDS = (
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "success_callback_timeout",
    "failure_callback_timeout",
    "stopped_callback_timeout",
    "dependency_id",
    "dependency_ids",
    "allow_dependency_failures",
    "repeats_left",
    "repeat_intervals",
    "retries_left",
    "retry_intervals",
    "enqueue_at_front_on_retry",
    "webhooks",
    "rate_limit_key",
    "rate_limit_concurrency",
)
OVERSIZE_MARK = "\x00oversize:"  # claim.lua's stand-in for a value over the cap
MAX_FIELDS = 64  # a hash with more is not read back by claim.lua (its reply stays bounded)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def stats_key(queue: str, outcome: str, ts: float | None = None) -> str:
    return keys.stats(queue, int((time.time() if ts is None else ts) // 60), outcome)


@dataclass
class Claimed:
    """A job taken by ``claim``: its raw hash (values over the cap replaced by a marker)."""

    id: str
    fields: dict[bytes, bytes]
    stripped: list[str]  # acted-on fields the hash carried (removed before anything read them)
    status: str  # the status it had while queued
    left_ms: int | None = None  # until its deadline at the claim, on Redis's clock; None = no deadline
    claimed_at: float = field(default_factory=time.monotonic)  # when the claim's reply came: left_ms counts from here


@dataclass
class Claim:
    queue: str
    token: str
    jobs: list[Claimed] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (entry, why) for entries with no job
    paused: bool = False  # an operator paused the queue (pause.lua): nothing was claimed
    batch_taken: int = 0  # batch-class jobs among the jobs (fair share's index said so)
    interactive_taken: int = 0  # and interactive ones: while yielding, no batch job joins them
    yielding: bool = False  # the queue served interactive jobs lately: batch-class jobs come in few (claim.lua)
    capped: bool = False  # the claim stopped at that cap with work left: filling the batch further takes none

    @property
    def held(self) -> bool:
        """Nothing taken from a queue holding work this claim may not take (jobs held for a light
        lane; on one, nothing light): do not block on the queue list, which is not empty."""
        return self.capped and not self.jobs

    def batch_room(self, cap: int) -> int:
        """Batch-class jobs a further claim into this batch may take: the cap counts over the whole
        batch, and none once it holds an interactive job while yielding (claim.lua)."""
        return 0 if self.yielding and self.interactive_taken else cap - self.batch_taken

    def extend(self, more: Claim) -> None:
        """Add a further claim under the same token: its jobs, drops and counts."""
        self.jobs += more.jobs
        self.dropped += more.dropped
        self.batch_taken += more.batch_taken
        self.interactive_taken += more.interactive_taken
        self.yielding, self.capped = self.yielding or more.yielding, more.capped


@dataclass
class Outcome:
    """What finish writes for one job: a result, or a failure with its structured error."""

    id: str
    ok: bool
    ttl: int
    value: Any = None  # the result dict (ok) or the exception text (failed)
    meta: dict | None = None  # the job's meta to store (failed: with "error"), None = keep


class Lifecycle:
    """The scripts bound to one Redis connection, one worker incarnation and its settings."""

    def __init__(
        self,
        connection: Redis,
        worker_name: str,
        lease_s: float,
        max_reruns: int,
        value_cap: int,
        batch_every: int = 10,
    ):
        self.connection = connection
        self.batch_every = batch_every  # LVM_FAIR_BATCH_EVERY
        self.set_yield(0, 0.0)  # the worker sets it once its device is known
        self.lane, self.light_max = "all", 0  # LVM_LANE, LVM_LIGHT_MAX_QUEUED (claim.lua's light lanes)
        self.worker_name = worker_name
        self.incarnation = os.urandom(6).hex()
        self.lease_ms = int(lease_s * 1000)
        self.max_reruns = max_reruns
        self.value_cap = value_cap
        self.max_fields = MAX_FIELDS
        self._counter = itertools.count(1)  # next() is atomic: the main and I/O threads both claim
        self._claim = connection.register_script(lua.source("claim"))
        self._renew = connection.register_script(lua.source("renew"))
        self._finish = connection.register_script(lua.source("finish"))
        self._release = connection.register_script(lua.source("release"))
        self._recover = connection.register_script(lua.source("recover"))

    def set_yield(self, jobs: int, window_s: float) -> None:
        """LVM_BATCH_YIELD_JOBS as resolved for the device (worker.loop.yield_jobs_for); 0: never yield."""
        self.yield_jobs = max(0, jobs)
        self.yield_window_ms = int(window_s * 1000) if self.yield_jobs > 0 else 0

    def set_lane(self, lane: str, light_max: int) -> None:
        """LVM_LANE and LVM_LIGHT_MAX_QUEUED: a 'light' worker claims only light tenants' interactive
        jobs; an 'all' worker leaves those to a live light lane (claim.lua)."""
        self.lane, self.light_max = lane, max(0, light_max)

    def next_token(self) -> str:
        return f"{self.incarnation}-{next(self._counter)}"

    def claim(self, queue: str, limit: int, token: str, batch_left: int | None = None) -> Claim:
        """Take up to ``limit`` jobs; while the queue yields to interactive work, at most
        ``batch_left`` (default LVM_BATCH_YIELD_JOBS) of them batch-class."""
        batch_left = self.yield_jobs if batch_left is None else max(0, batch_left)
        reply = self._claim(
            keys=[keys.queue(queue), keys.leases(queue), keys.started(queue), keys.EVENTS, keys.fair_ring(queue),
                  keys.fair_state(queue), keys.paused(queue), keys.lane_wake(queue)],
            args=[limit, self.worker_name, token, self.lease_ms, self.value_cap, rq_time(), keys.JOB_PREFIX,
                  self.max_fields, keys.fair_lists(queue), self.batch_every, fairness.QUANTUM, batch_left,
                  self.yield_window_ms, self.light_max, self.lane, *ACTED_ON_FIELDS],
        )  # fmt: skip
        claim = Claim(queue, token)
        for entry in reply:
            kind = _text(entry[0])
            if kind == "paused":
                claim.paused = True
            elif kind == "picked":
                claim.batch_taken, claim.yielding, claim.capped = int(entry[1]), entry[2] == 1, entry[3] == 1
                claim.interactive_taken = int(entry[4])
            elif kind == "dropped":
                claim.dropped.append((_text(entry[1]), _text(entry[2])))
            else:
                raw = entry[2]
                fields = dict(zip(raw[0::2], raw[1::2], strict=True))
                left = _text(entry[5]) if len(entry) > 5 else ""
                claim.jobs.append(
                    Claimed(_text(entry[1]), fields, [_text(f) for f in entry[3]], _text(entry[4]),
                            int(left) if left.lstrip("-").isdigit() else None)
                )  # fmt: skip
        return claim

    def renew(self, queues: list[str], held: dict[str, list[str]], connection: Redis | None = None) -> list[str]:
        """Extend this worker's leases ({token: ids}) and its liveness; returns ids it no longer owns."""
        members = [f"{job_id}:{token}" for token, ids in held.items() for job_id in ids]
        lost = self._renew(
            keys=[keys.ALIVE, *(keys.leases(q) for q in queues)],
            args=[self.incarnation, self.lease_ms, keys.JOB_PREFIX, *members],
            client=connection,
        )
        return [_text(i) for i in lost]

    def finish(self, queue: str, token: str, outcomes: list[Outcome]) -> list[str]:
        """Write every outcome of a batch in one step; 'written', 'already' (a retry) or 'stale'."""
        args: list[Any] = [token, self.worker_name, rq_time(), keys.JOB_PREFIX, keys.RESULTS_PREFIX, STATS_TTL_S]
        for o in outcomes:
            value = encode_result(o.value) if o.ok else encode_failure(str(o.value))
            meta = "" if o.meta is None else json.dumps(o.meta, separators=(",", ":"))
            args += [o.id, "finished" if o.ok else "failed", o.ttl, value, meta]
        script_keys = [keys.leases(queue), keys.started(queue), keys.finished(queue), keys.failed(queue),
                       stats_key(queue, "finished"), stats_key(queue, "failed"), keys.EVENTS]  # fmt: skip
        return [_text(r) for r in self._finish(keys=script_keys, args=args)]

    def release(self, queue: str, token: str, ids: list[str]) -> list[str]:
        """Hand unfinished jobs back to the front of their queue (drain timeout, forced stop)."""
        reply = self._release(
            keys=[keys.leases(queue), keys.started(queue), keys.queue(queue), keys.EVENTS, keys.fair_ring(queue)],
            args=[token, keys.JOB_PREFIX, keys.fair_lists(queue), *ids],
        )
        return [_text(i) for i in reply]

    def recover(
        self, queue: str, live_tokens: list[str], failure_ttl: int, limit: int = 100, connection: Redis | None = None
    ) -> list[tuple[str, str, str]]:
        """Put back (or fail as abandoned) jobs whose lease expired and whose owner went silent.
        ``live_tokens``: this worker's batches in hand, which are not orphans whatever their lease."""
        script_keys = [keys.leases(queue), keys.started(queue), keys.queue(queue), keys.failed(queue), keys.ALIVE,
                       stats_key(queue, "failed"), keys.EVENTS, keys.fair_ring(queue)]  # fmt: skip
        mine = "," + ",".join(live_tokens) + ","
        args = [self.max_reruns, self.incarnation, mine, self.lease_ms, failure_ttl, keys.JOB_PREFIX,
                keys.RESULTS_PREFIX, rq_time(), limit, STATS_TTL_S, MAX_HISTORY_CHARS,
                keys.fair_lists(queue)]  # fmt: skip
        reply = self._recover(keys=script_keys, args=args, client=connection)
        return [tuple(_text(x) for x in entry) + ("",) * (3 - len(entry)) for entry in reply]  # type: ignore[misc]

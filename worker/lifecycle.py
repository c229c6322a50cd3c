"""The job lifecycle: every change of a job's state is one Lua script, so one atomic Redis step.

::

                 claim (pop + lease + started, one script)
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

A claimed job is never in neither the queue nor a registry: the claim script pops the id and
writes the lease in one step. The lease lives in ``lvm:leases:<queue>`` (member ``<id>:<token>``,
score = lease deadline in Redis server milliseconds); the same member sits in RQ's started
registry (``rq:wip:<queue>``) so `rq info` counts it, with a score a day later than the lease so
that RQ's own abandoned-job cleanup never races ours.

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
- an ambiguous reply (connection lost after Redis ran a script): finish and release are
  idempotent for the same token; jobs of an unanswered claim are owned by this incarnation but
  never renewed, so this worker's own recover pass puts them back (without counting a rerun).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from producer.schema import EVENTS_MAXLEN, EVENTS_STREAM, JOB_PREFIX, QUEUE_PREFIX, RESULTS_PREFIX, STATS_PREFIX

ALIVE_KEY = "lvm:alive"
STATS_TTL_S = 3600
MAX_HISTORY_CHARS = 2000
WIP_GRACE_S = 86400  # RQ's started-registry score lies this far past the lease

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
OVERSIZE_MARK = "\x00oversize:"

_LUA_TIME = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

CLAIM = (
    _LUA_TIME
    + """
-- KEYS: 1 queue list, 2 lease zset, 3 RQ started registry, 4 event stream
-- ARGV: 1 max jobs, 2 worker name, 3 token, 4 lease ms, 5 value cap (bytes), 6 started_at,
--       7 job key prefix, 8 max fields, then the acted-on field names
local lease_until = now_ms + tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local busy = {started = 1, finished = 1, failed = 1, stopped = 1, canceled = 1}
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  if #id > 128 or not string.match(id, '^[%w_%-]+$') then
    out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'queue entry is not a job id'}
  else
    local key = ARGV[7] .. id
    local kind = redis.call('TYPE', key)['ok']
    local status = kind == 'hash' and redis.call('HGET', key, 'status') or false
    if kind == 'none' then
      out[#out + 1] = {'dropped', id, 'no job hash (expired before a worker took it, or never written)'}
    elseif kind ~= 'hash' then
      out[#out + 1] = {'dropped', id, 'job key is a ' .. kind .. ', not a hash'}
    elseif status and busy[status] then
      out[#out + 1] = {'dropped', id, 'job is already ' .. status .. ' (its id was queued twice)'}
    else
      local stripped = {}
      local acted = redis.call('HMGET', key, unpack(ARGV, 9))  -- one call, not one per field
      for i = 1, #ARGV - 8 do
        local v = acted[i]
        if v then
          if v ~= '' then stripped[#stripped + 1] = ARGV[i + 8] end
          redis.call('HDEL', key, ARGV[i + 8])
        end
      end
      local fields = {}
      if redis.call('HLEN', key) > tonumber(ARGV[8]) then
        fields = {'\\0fields', tostring(redis.call('HLEN', key))}
      else
        local raw = redis.call('HGETALL', key)
        local total = 0
        for j = 1, #raw, 2 do
          fields[#fields + 1] = raw[j]
          if #raw[j + 1] > cap then
            fields[#fields + 1] = '\\0oversize:' .. #raw[j + 1]
          else
            fields[#fields + 1] = raw[j + 1]
            total = total + #raw[j + 1]
          end
        end
        if total > cap then  -- many fields just under the cap: the reply itself stays bounded
          fields = {'\\0total', tostring(total)}
        end
      end
      local member = id .. ':' .. ARGV[3]
      redis.call('HSET', key, 'status', 'started', 'worker_name', ARGV[2], 'started_at', ARGV[6],
                 'last_heartbeat', ARGV[6], 'lvm_token', ARGV[3])
      redis.call('PERSIST', key)
      redis.call('ZADD', KEYS[2], lease_until, member)
      redis.call('ZADD', KEYS[3], math.floor(lease_until / 1000) + WIP_GRACE_S, member)
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', 'started')
      out[#out + 1] = {'claimed', id, fields, stripped, status or ''}
    end
  end
end
return out
""".replace("WIP_GRACE_S", str(WIP_GRACE_S))
)

RENEW = (
    _LUA_TIME
    + """
-- KEYS: 1 alive zset, then one lease zset per queue
-- ARGV: 1 incarnation, 2 lease ms, 3 job prefix, then the leases held, as <id>:<token>
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
local lost = {}
for i = 4, #ARGV do
  local member = ARGV[i]
  local id, token = string.match(member, '^(.*):([^:]*)$')
  local key = ARGV[3] .. (id or '')
  local renewed = false
  if id and redis.call('HGET', key, 'lvm_token') == token and redis.call('HGET', key, 'status') == 'started' then
    for k = 2, #KEYS do
      if redis.call('ZSCORE', KEYS[k], member) then
        redis.call('ZADD', KEYS[k], 'XX', now_ms + tonumber(ARGV[2]), member)
        renewed = true
      end
    end
  end
  if not renewed then lost[#lost + 1] = id or member end
end
return lost
"""
)

FINISH = """
-- KEYS: 1 lease zset, 2 RQ started registry, 3 finished registry, 4 failed registry,
--       5 stats finished key, 6 stats failed key, 7 event stream
-- ARGV: 1 token, 2 worker name, 3 ended_at, 4 job prefix, 5 results prefix, 6 stats ttl,
--       then 5 per job: id, outcome (finished|failed), ttl, value (base64), meta JSON ('' = keep)
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local out = {}
local counts = {finished = 0, failed = 0}
for i = 7, #ARGV, 5 do
  local id, outcome, ttl, value, meta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local key = ARGV[4] .. id
  local member = id .. ':' .. ARGV[1]
  if redis.call('HGET', key, 'lvm_token') ~= ARGV[1] then
    out[#out + 1] = 'stale'
  elseif redis.call('HGET', key, 'status') ~= 'started' then
    out[#out + 1] = 'already'
  else
    redis.call('HSET', key, 'status', outcome, 'ended_at', ARGV[3])
    if meta ~= '' then redis.call('HSET', key, 'meta', meta) end
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    local stream = ARGV[5] .. id
    if outcome == 'finished' then
      redis.call('ZADD', KEYS[3], now_s + ttl, id)
      redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 1, 'worker_name', ARGV[2],
                 'execution_id', ARGV[1], 'return_value', value)
    else
      redis.call('ZADD', KEYS[4], now_s + ttl, id)
      redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 2, 'worker_name', ARGV[2],
                 'execution_id', ARGV[1], 'exc_string', value)
    end
    redis.call('EXPIRE', key, ttl)
    redis.call('EXPIRE', stream, ttl)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', outcome)
    counts[outcome] = counts[outcome] + 1
    out[#out + 1] = 'written'
  end
end
for k, outcome in pairs({[5] = 'finished', [6] = 'failed'}) do
  if counts[outcome] > 0 then
    redis.call('INCRBY', KEYS[k], counts[outcome])
    redis.call('EXPIRE', KEYS[k], tonumber(ARGV[6]))
  end
end
return out
"""

RELEASE = """
-- KEYS: 1 lease zset, 2 RQ started registry, 3 queue list, 4 event stream
-- ARGV: 1 token, 2 job prefix, then ids (handed back at the front, in order)
local out = {}
for i = #ARGV, 3, -1 do
  local id = ARGV[i]
  local key = ARGV[2] .. id
  local member = id .. ':' .. ARGV[1]
  if redis.call('HGET', key, 'lvm_token') == ARGV[1] and redis.call('HGET', key, 'status') == 'started' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'lvm_token')
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('LPUSH', KEYS[3], id)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', 'queued')
    out[#out + 1] = id
  end
end
return out
"""

RECOVER = (
    _LUA_TIME
    + """
-- KEYS: 1 lease zset, 2 RQ started registry, 3 queue list, 4 failed registry, 5 alive zset,
--       6 stats failed key, 7 event stream
-- ARGV: 1 max reruns, 2 my incarnation, 3 my live tokens (',t1,t2,'), 4 lease ms, 5 failure ttl,
--       6 job prefix, 7 results prefix, 8 now iso, 9 limit, 10 stats ttl, 11 history cap
local out = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[9]))
for _, member in ipairs(expired) do
  local id, token = string.match(member, '^(.*):([^:]*)$')
  local key = ARGV[6] .. (id or '')
  local drop = (not id) or redis.call('TYPE', key)['ok'] ~= 'hash'
    or redis.call('HGET', key, 'lvm_token') ~= token or redis.call('HGET', key, 'status') ~= 'started'
  if drop then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    out[#out + 1] = {id or member, 'cleared'}
  else
    local incarnation = string.match(token, '^(.*)%-%d+$') or token
    local mine = incarnation == ARGV[2]
    local seen = tonumber(redis.call('ZSCORE', KEYS[5], incarnation) or '0')
    local alive = seen > now_ms - tonumber(ARGV[4])
    if (mine and string.find(ARGV[3], ',' .. token .. ',', 1, true)) or ((not mine) and alive) then
      -- running here now, or its owner still renews: not an orphan
    else
      local owner = redis.call('HGET', key, 'worker_name') or '?'
      local reruns = tonumber(redis.call('HGET', key, 'lvm_reruns') or '0') or 0
      local history = (redis.call('HGET', key, 'lvm_history') or '') .. owner .. '@' .. ARGV[8] .. ' '
      history = string.sub(history, -tonumber(ARGV[11]))
      redis.call('ZREM', KEYS[1], member)
      redis.call('ZREM', KEYS[2], member)
      if mine or reruns < tonumber(ARGV[1]) then
        redis.call('HSET', key, 'status', 'queued', 'lvm_history', history)
        if not mine then redis.call('HSET', key, 'lvm_reruns', reruns + 1) end
        redis.call('HDEL', key, 'lvm_token')
        redis.call('LPUSH', KEYS[3], id)
        redis.call('XADD', KEYS[7], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', 'queued')
        out[#out + 1] = {id, 'requeued', owner}
      else
        local message = 'worker ' .. owner .. ' stopped renewing its lease while running this job, after '
          .. reruns .. ' earlier re-run(s) (history: ' .. history .. '); not retried again'
        local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'meta') or '{}')
        if not ok or type(meta) ~= 'table' then meta = {} end
        meta['error'] = {error = 'abandoned', message = message}
        local ttl = tonumber(ARGV[5])
        redis.call('HSET', key, 'status', 'failed', 'ended_at', ARGV[8], 'meta', cjson.encode(meta),
                   'lvm_history', history)
        redis.call('HDEL', key, 'lvm_token')
        redis.call('ZADD', KEYS[4], math.floor(now_ms / 1000) + ttl, id)
        redis.call('XADD', ARGV[7] .. id, 'MAXLEN', '~', 10, '*', 'type', 2, 'worker_name', owner)
        redis.call('EXPIRE', key, ttl)
        redis.call('EXPIRE', ARGV[7] .. id, ttl)
        redis.call('INCRBY', KEYS[6], 1)
        redis.call('EXPIRE', KEYS[6], tonumber(ARGV[10]))
        redis.call('XADD', KEYS[7], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', 'failed')
        out[#out + 1] = {id, 'failed', owner}
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - 86400000)
return out
"""
)


# The scripts name the trim length literally (an ARGV slot each would shift every index above).
CLAIM, RELEASE, FINISH, RECOVER = (
    s.replace("EVENTS_MAXLEN", str(EVENTS_MAXLEN)) for s in (CLAIM, RELEASE, FINISH, RECOVER)
)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def rq_time(ts: float | None = None) -> str:
    """RQ's timestamp format, so RQ and producers parse what the scripts write."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stats_key(queue: str, outcome: str, ts: float | None = None) -> str:
    minute = int((time.time() if ts is None else ts) // 60)
    return f"{STATS_PREFIX}{queue}:{minute}:{outcome}"


@dataclass
class Claimed:
    """A job taken by ``claim``: its raw hash (values over the cap replaced by a marker)."""

    id: str
    fields: dict[bytes, bytes]
    stripped: list[str]  # acted-on fields the hash carried (removed before anything read them)
    status: str  # the status it had while queued


@dataclass
class Claim:
    queue: str
    token: str
    jobs: list[Claimed] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (entry, why) for entries with no job


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

    def __init__(self, connection: Redis, worker_name: str, lease_s: float, max_reruns: int, value_cap: int):
        self.connection = connection
        self.worker_name = worker_name
        self.incarnation = os.urandom(6).hex()
        self.lease_ms = int(lease_s * 1000)
        self.max_reruns = max_reruns
        self.value_cap = value_cap
        self.max_fields = 64
        self._counter = itertools.count(1)  # next() is atomic: the main and I/O threads both claim
        self._claim = connection.register_script(CLAIM)
        self._renew = connection.register_script(RENEW)
        self._finish = connection.register_script(FINISH)
        self._release = connection.register_script(RELEASE)
        self._recover = connection.register_script(RECOVER)

    @staticmethod
    def keys(queue: str) -> dict[str, str]:
        return {
            "queue": QUEUE_PREFIX + queue,
            "lease": f"lvm:leases:{queue}",
            "wip": f"rq:wip:{queue}",
            "finished": f"rq:finished:{queue}",
            "failed": f"rq:failed:{queue}",
        }

    def next_token(self) -> str:
        return f"{self.incarnation}-{next(self._counter)}"

    def claim(self, queue: str, limit: int, token: str) -> Claim:
        k = self.keys(queue)
        reply = self._claim(
            keys=[k["queue"], k["lease"], k["wip"], EVENTS_STREAM],
            args=[limit, self.worker_name, token, self.lease_ms, self.value_cap, rq_time(), JOB_PREFIX,
                  self.max_fields, *ACTED_ON_FIELDS],
        )  # fmt: skip
        claim = Claim(queue, token)
        for entry in reply:
            kind = _text(entry[0])
            if kind == "dropped":
                claim.dropped.append((_text(entry[1]), _text(entry[2])))
            else:
                raw = entry[2]
                fields = dict(zip(raw[0::2], raw[1::2], strict=True))
                claim.jobs.append(Claimed(_text(entry[1]), fields, [_text(f) for f in entry[3]], _text(entry[4])))
        return claim

    def renew(self, queues: list[str], held: dict[str, list[str]], connection: Redis | None = None) -> list[str]:
        """Extend this worker's leases ({token: ids}) and its liveness; returns ids it no longer owns."""
        keys = [ALIVE_KEY] + [self.keys(q)["lease"] for q in queues]
        members = [f"{job_id}:{token}" for token, ids in held.items() for job_id in ids]
        args = [self.incarnation, self.lease_ms, JOB_PREFIX, *members]
        lost = self._renew(keys=keys, args=args, client=connection)
        return [_text(i) for i in lost]

    def finish(self, queue: str, token: str, outcomes: list[Outcome]) -> list[str]:
        """Write every outcome of a batch in one step; 'written', 'already' (a retry) or 'stale'."""
        k = self.keys(queue)
        args: list[Any] = [token, self.worker_name, rq_time(), JOB_PREFIX, RESULTS_PREFIX, STATS_TTL_S]
        for o in outcomes:
            if o.ok:
                value = base64.b64encode(json.dumps(o.value, separators=(",", ":")).encode()).decode()
            else:
                value = base64.b64encode(zlib.compress(str(o.value).encode("utf-8", "replace"))).decode()
            meta = "" if o.meta is None else json.dumps(o.meta, separators=(",", ":"))
            args += [o.id, "finished" if o.ok else "failed", o.ttl, value, meta]
        keys = [k["lease"], k["wip"], k["finished"], k["failed"], stats_key(queue, "finished"),
                stats_key(queue, "failed"), EVENTS_STREAM]  # fmt: skip
        return [_text(r) for r in self._finish(keys=keys, args=args)]

    def release(self, queue: str, token: str, ids: list[str]) -> list[str]:
        """Hand unfinished jobs back to the front of their queue (drain timeout, forced stop)."""
        k = self.keys(queue)
        reply = self._release(keys=[k["lease"], k["wip"], k["queue"], EVENTS_STREAM], args=[token, JOB_PREFIX, *ids])
        return [_text(i) for i in reply]

    def recover(
        self, queue: str, live_tokens: list[str], failure_ttl: int, limit: int = 100, connection: Redis | None = None
    ) -> list[tuple[str, str, str]]:
        """Put back (or fail as abandoned) jobs whose lease expired and whose owner went silent.
        ``live_tokens``: this worker's batches in hand, which are not orphans whatever their lease."""
        k = self.keys(queue)
        keys = [k["lease"], k["wip"], k["queue"], k["failed"], ALIVE_KEY, stats_key(queue, "failed"), EVENTS_STREAM]
        mine = "," + ",".join(live_tokens) + ","
        args = [self.max_reruns, self.incarnation, mine, self.lease_ms, failure_ttl, JOB_PREFIX,
                RESULTS_PREFIX, rq_time(), limit, STATS_TTL_S, MAX_HISTORY_CHARS]  # fmt: skip
        reply = self._recover(keys=keys, args=args, client=connection)
        return [tuple(_text(x) for x in entry) + ("",) * (3 - len(entry)) for entry in reply]  # type: ignore[misc]

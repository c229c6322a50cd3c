-- Shared by every script but submit.lua's raw form: wire/lua.py puts the shebang and the Python
-- side's constants (EVENTS_MAXLEN, WIP_GRACE_S, JOB_ID_MAX, JOB_ID_CLASS) above this, then these
-- helpers, then the script itself.
--
-- Redis does not roll back a script that fails halfway, so every script checks what can fail
-- (the type of every key it writes; any program can write Redis) before its first write. The
-- shebang makes Redis refuse a script whole, before it runs, at maxmemory (OOM) or without the
-- replicas it needs (NOREPLICAS): never a half-run script from those either.

-- Redis's clock in milliseconds: one clock for every worker and gateway, whatever their hosts say.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The job-id rule (wire/keys.py: JOB_ID and JOB_ID_LUA_CLASS say the same).
local function valid_job_id(id)
  return #id >= 1 and #id <= JOB_ID_MAX and string.match(id, '^[' .. JOB_ID_CLASS .. ']+$') ~= nil
end

local function kind(key)
  return redis.call('TYPE', key)['ok']
end

-- The first of {key, type} pairs whose key exists with another type, as an error reply the
-- caller returns before writing anything: 'LVMQ_WRONGTYPE ...' (config/connections.py counts it
-- as "Redis cannot take this step now": back off and retry, state intact).
local function wrong_types(pairs_)
  for _, p in ipairs(pairs_) do
    local k = kind(p[1])
    if k ~= 'none' and k ~= p[2] then
      return redis.error_reply('LVMQ_WRONGTYPE key ' .. p[1] .. ' is a ' .. k .. ', not a ' .. p[2] ..
        '; something other than lvm-queue wrote it: rename or delete it')
    end
  end
  return nil
end

-- One entry on the job event stream, in the same step as the change it announces. Best effort:
-- the stream is a hint for watchers, and a stream key of the wrong type must not fail the change.
local function announce(stream, id, status)
  pcall(redis.call, 'XADD', stream, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', status)
end

-- The same for many jobs that changed alike in one step (a batch claimed, a batch's outcomes):
-- one entry whose 'jobs' field lists their ids, space-separated (ids hold no spaces). One XADD
-- per batch instead of one per job.
local function announce_all(stream, ids, status)
  if #ids > 0 then
    pcall(redis.call, 'XADD', stream, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'jobs', table.concat(ids, ' '),
          'status', status)
  end
end

-- A per-minute counter. Best effort, like announce: a counter key of the wrong type (or one
-- past an integer) must not fail the jobs it counts.
local function count(key, n, ttl)
  if n > 0 and pcall(redis.call, 'INCRBY', key, n) then
    redis.call('EXPIRE', key, ttl)
  end
end

-- Fair share's index (docs/gateway.md, "Fair share"). A job admit.lua queued carries lvm_tenant
-- and lvm_class: its id sits in the queue list (the depth `rq info`, KEDA and Prometheus read)
-- and in its tenant's class list <prefix><tenant>:<i|b>; the tenant is in the ring while it has
-- queued jobs. A job nobody indexed (RQ's own enqueue, a raw submit.lua) is in the queue list alone.
local function valid_tenant(t)
  return type(t) == 'string' and #t >= 1 and #t <= TENANT_MAX and string.match(t, '^[%w._-]+$') ~= nil
end

-- A job's tenant list and tenant, or nil when it is not indexed (or its hash is not a hash).
local function fair_entry(prefix, job_key)
  local ok, f = pcall(redis.call, 'HMGET', job_key, 'lvm_tenant', 'lvm_class')
  if ok and valid_tenant(f[1]) and (f[2] == 'i' or f[2] == 'b') then return prefix .. f[1] .. ':' .. f[2], f[1] end
  return nil
end

-- Back to the front of its tenant's list (recover, release), and the tenant back in the ring.
-- Best effort: an index key of another type leaves the job to the queue list alone, where claim
-- still finds it (it takes the queue's head in order whenever no tenant has work).
local function index_front(prefix, ring, job_key, id)
  local list, tenant = fair_entry(prefix, job_key)
  if not list then return end
  if pcall(redis.call, 'LPUSH', list, id) then
    local ok, at = pcall(redis.call, 'LPOS', ring, tenant)
    if ok and not at then pcall(redis.call, 'RPUSH', ring, tenant) end
  end
end

-- A light lane's limit (claim.lua) from a worker's ARGV or the fair state's stamp: 0 to 10000,
-- whatever the text (hostile or missing values are 0, none light).
local function light_limit(value)
  return math.max(0, math.min(10000, tonumber(value or '') or 0))
end

-- Light lanes (claim.lua): the limit of the live light lane as its last claim stamped it in the
-- fair state, 0 when none is live (no stamp, one LIGHT_LIVE_MS old, or one from a clock ahead of
-- Redis's).
local function live_light_max(state, now)
  local f = redis.call('HMGET', state, 'light_at', 'light_max')
  local at = tonumber(f[1] or '') or 0
  if not (at <= now and now - at < LIGHT_LIVE_MS) then return 0 end
  return light_limit(f[2])
end

-- Wake a light lane blocked on its queue's wake list (wire/keys.py lane_wake): light work is there.
-- One token at most, expiring; best effort like announce: a key of another type (or none given,
-- by a caller that predates it) wakes no one, and the lane finds the work at its fallback poll.
local function wake_lane(key)
  if key and pcall(redis.call, 'RPUSH', key, '1') then
    redis.call('LTRIM', key, -1, -1)
    redis.call('PEXPIRE', key, LIGHT_LIVE_MS)
  end
end

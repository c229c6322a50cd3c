-- claim: QUEUED -> STARTED for up to ARGV[1] jobs. Pops the ids and leases them in the same step,
-- so a claimed job is never in neither the queue nor a registry.
--
-- KEYS: 1 queue list, 2 lease zset, 3 RQ started registry, 4 event stream
-- ARGV: 1 max jobs, 2 worker name, 3 token, 4 lease ms, 5 value cap (bytes), 6 started_at,
--       7 job key prefix, 8 max fields, then the acted-on field names
-- Returns per entry {'claimed', id, fields, stripped, status, left} or {'dropped', entry, why}; left
-- is the ms until the job's lvm_deadline (Redis's clock, written by admit.lua; '' when it has none).
--
-- Commands per job: HLEN, HGETALL, HSET and PERSIST; the pop, both registries' ZADDs and the
-- 'started' event once per batch (one LPOP of many, one ZADD of all members each, one entry
-- naming every job). A hash of another type, or past max fields, takes a few more, once.
local bad = wrong_types({{KEYS[1], 'list'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}})
if bad then return bad end
local now = now_ms()
local lease_until = now + tonumber(ARGV[4])
local wip_until = math.floor(lease_until / 1000) + WIP_GRACE_S
local cap = tonumber(ARGV[5])
local max_fields = tonumber(ARGV[8])
local busy = {started = 1, finished = 1, failed = 1, stopped = 1, canceled = 1}
local acted = {}
for i = 9, #ARGV do acted[ARGV[i]] = true end
local out = {}
local leases, wips, started = {}, {}, {}

-- The job's fields as the reply carries them (acted-on ones left out: they are deleted), its
-- status, deadline, and the acted-on fields it had set (stripped) and had at all (to delete).
local function read(key, n)
  if n > max_fields then  -- not read back whole: the reply stays bounded
    local f = redis.call('HMGET', key, 'status', 'lvm_deadline')
    local present, stripped = {}, {}
    local values = redis.call('HMGET', key, unpack(ARGV, 9))
    for i = 9, #ARGV do
      local v = values[i - 8]
      if v then
        present[#present + 1] = ARGV[i]
        if v ~= '' then stripped[#stripped + 1] = ARGV[i] end
      end
    end
    return {'\0fields', tostring(n)}, f[1], f[2], stripped, present
  end
  local raw = redis.call('HGETALL', key)
  local fields, stripped, present = {}, {}, {}
  local status, deadline = false, false
  local total = 0
  for j = 1, #raw, 2 do
    local name, value = raw[j], raw[j + 1]
    if acted[name] then
      present[#present + 1] = name
      if value ~= '' then stripped[#stripped + 1] = name end
    else
      if name == 'status' then status = value elseif name == 'lvm_deadline' then deadline = value end
      fields[#fields + 1] = name
      if #value > cap then
        fields[#fields + 1] = '\0oversize:' .. #value
      else
        fields[#fields + 1] = value
        total = total + #value
      end
    end
  end
  if total > cap then  -- many fields just under the cap: the reply itself stays bounded
    fields = {'\0total', tostring(total)}
  end
  return fields, status, deadline, stripped, present
end

local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1])) or {}
for _, id in ipairs(ids) do
  if not valid_job_id(id) then
    out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'queue entry is not a job id'}
  else
    local key = ARGV[7] .. id
    local ok, n = pcall(redis.call, 'HLEN', key)  -- 0: no such key; an error: not a hash
    if not ok then
      out[#out + 1] = {'dropped', id, 'job key is a ' .. kind(key) .. ', not a hash'}
    elseif n == 0 then
      out[#out + 1] = {'dropped', id, 'no job hash (expired before a worker took it, or never written)'}
    else
      local fields, status, deadline, stripped, present = read(key, n)
      if status and busy[status] then
        out[#out + 1] = {'dropped', id, 'job is already ' .. status .. ' (its id was queued twice)'}
      else
        if #present > 0 then redis.call('HDEL', key, unpack(present)) end
        local member = id .. ':' .. ARGV[3]
        redis.call('HSET', key, 'status', 'started', 'worker_name', ARGV[2], 'started_at', ARGV[6],
                   'last_heartbeat', ARGV[6], 'lvm_token', ARGV[3])
        redis.call('PERSIST', key)
        leases[#leases + 1] = lease_until
        leases[#leases + 1] = member
        wips[#wips + 1] = wip_until
        wips[#wips + 1] = member
        started[#started + 1] = id
        deadline = tonumber(deadline or '')
        out[#out + 1] = {'claimed', id, fields, stripped, status or '', deadline and tostring(deadline - now) or ''}
      end
    end
  end
end
if #leases > 0 then
  redis.call('ZADD', KEYS[2], unpack(leases))
  redis.call('ZADD', KEYS[3], unpack(wips))
end
announce_all(KEYS[4], started, 'started')
return out

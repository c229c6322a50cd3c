-- claim: QUEUED -> STARTED for up to ARGV[1] jobs. Pops each id and leases it in the same step, so
-- a claimed job is never in neither the queue nor a registry.
--
-- KEYS: 1 queue list, 2 lease zset, 3 RQ started registry, 4 event stream
-- ARGV: 1 max jobs, 2 worker name, 3 token, 4 lease ms, 5 value cap (bytes), 6 started_at,
--       7 job key prefix, 8 max fields, then the acted-on field names
-- Returns per entry {'claimed', id, fields, stripped, status, left} or {'dropped', entry, why}; left
-- is the ms until the job's lvm_deadline (Redis's clock, written by admit.lua; '' when it has none).
local bad = wrong_types({{KEYS[1], 'list'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}})
if bad then return bad end
local now = now_ms()
local lease_until = now + tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local busy = {started = 1, finished = 1, failed = 1, stopped = 1, canceled = 1}
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  if not valid_job_id(id) then
    out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'queue entry is not a job id'}
  else
    local key = ARGV[7] .. id
    local type_ = kind(key)
    local status = type_ == 'hash' and redis.call('HGET', key, 'status') or false
    if type_ == 'none' then
      out[#out + 1] = {'dropped', id, 'no job hash (expired before a worker took it, or never written)'}
    elseif type_ ~= 'hash' then
      out[#out + 1] = {'dropped', id, 'job key is a ' .. type_ .. ', not a hash'}
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
        fields = {'\0fields', tostring(redis.call('HLEN', key))}
      else
        local raw = redis.call('HGETALL', key)
        local total = 0
        for j = 1, #raw, 2 do
          fields[#fields + 1] = raw[j]
          if #raw[j + 1] > cap then
            fields[#fields + 1] = '\0oversize:' .. #raw[j + 1]
          else
            fields[#fields + 1] = raw[j + 1]
            total = total + #raw[j + 1]
          end
        end
        if total > cap then  -- many fields just under the cap: the reply itself stays bounded
          fields = {'\0total', tostring(total)}
        end
      end
      local member = id .. ':' .. ARGV[3]
      redis.call('HSET', key, 'status', 'started', 'worker_name', ARGV[2], 'started_at', ARGV[6],
                 'last_heartbeat', ARGV[6], 'lvm_token', ARGV[3])
      redis.call('PERSIST', key)
      redis.call('ZADD', KEYS[2], lease_until, member)
      redis.call('ZADD', KEYS[3], math.floor(lease_until / 1000) + WIP_GRACE_S, member)
      announce(KEYS[4], id, 'started')
      local deadline = tonumber(redis.call('HGET', key, 'lvm_deadline') or '')
      out[#out + 1] = {'claimed', id, fields, stripped, status or '', deadline and tostring(deadline - now) or ''}
    end
  end
end
return out

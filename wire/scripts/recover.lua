-- recover: a job whose lease expired and whose owner went silent goes back to the queue
-- (STARTED -> QUEUED, a rerun counted), or fails 'abandoned' once its reruns reach the maximum.
-- The lease is re-read inside the script, so two workers recovering the same job cannot both act.
--
-- KEYS: 1 lease zset, 2 RQ started registry, 3 queue list, 4 failed registry, 5 alive zset,
--       6 stats failed key, 7 event stream, 8 tenant ring
-- ARGV: 1 max reruns, 2 my incarnation, 3 my live tokens (',t1,t2,'), 4 lease ms, 5 failure ttl,
--       6 job prefix, 7 results prefix, 8 now iso, 9 limit, 10 stats ttl, 11 history cap,
--       12 tenant list prefix
-- A requeued job that was indexed goes back to the front of its tenant's list too (fair share).
-- Returns per expired lease {id, 'cleared' | 'requeued' | 'failed', owner}.
--
-- Everything that can fail for one job (its meta's JSON, its result key's type) is worked out
-- before that job's first write: a script that stopped after the lease went would leave the
-- job 'started' with no lease, where no script would ever find it again.
local bad = wrong_types({{KEYS[1], 'zset'}, {KEYS[2], 'zset'}, {KEYS[3], 'list'}, {KEYS[4], 'zset'},
                         {KEYS[5], 'zset'}, {KEYS[8], 'list'}})
if bad then return bad end
local now = now_ms()
local out = {}
local failed = 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[9]))
for _, member in ipairs(expired) do
  local id, token = string.match(member, '^(.*):([^:]*)$')
  local key = ARGV[6] .. (id or '')
  local drop = (not id) or kind(key) ~= 'hash'
    or redis.call('HGET', key, 'lvm_token') ~= token or redis.call('HGET', key, 'status') ~= 'started'
  if drop then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    out[#out + 1] = {id or member, 'cleared'}
  else
    local incarnation = string.match(token, '^(.*)%-%d+$') or token
    local mine = incarnation == ARGV[2]
    local seen = tonumber(redis.call('ZSCORE', KEYS[5], incarnation) or '0')
    local alive = seen > now - tonumber(ARGV[4])
    if (mine and string.find(ARGV[3], ',' .. token .. ',', 1, true)) or ((not mine) and alive) then
      -- running here now, or its owner still renews: not an orphan
    else
      local owner = string.sub(redis.call('HGET', key, 'worker_name') or '?', 1, 200)
      local reruns = tonumber(redis.call('HGET', key, 'lvm_reruns') or '0') or 0
      local history = (redis.call('HGET', key, 'lvm_history') or '') .. owner .. '@' .. ARGV[8] .. ' '
      history = string.sub(history, -tonumber(ARGV[11]))
      if mine or reruns < tonumber(ARGV[1]) then
        redis.call('ZREM', KEYS[1], member)
        redis.call('ZREM', KEYS[2], member)
        redis.call('HSET', key, 'status', 'queued', 'lvm_history', history)
        if not mine then redis.call('HSET', key, 'lvm_reruns', reruns + 1) end
        redis.call('HDEL', key, 'lvm_token')
        redis.call('LPUSH', KEYS[3], id)
        index_front(ARGV[12], KEYS[8], key, id)
        announce(KEYS[7], id, 'queued')
        out[#out + 1] = {id, 'requeued', owner}
      else
        local message = 'worker ' .. owner .. ' stopped renewing its lease while running this job, after '
          .. reruns .. ' earlier re-run(s) (history: ' .. history .. '); not retried again'
        local error_ = {error = 'abandoned', message = message}
        -- The job's meta, with the error added; a meta Lua cannot re-encode (NaN, Infinity, 1e400,
        -- which Python's json and RQ write) or that is not an object gives way to the error alone.
        local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'meta') or '{}')
        if not ok or type(meta) ~= 'table' then meta = {} end
        meta['error'] = error_
        local encoded_ok, encoded = pcall(cjson.encode, meta)
        if not encoded_ok then encoded = cjson.encode({error = error_}) end
        local stream = ARGV[7] .. id
        local stream_type = kind(stream)
        local ttl = tonumber(ARGV[5])
        redis.call('ZREM', KEYS[1], member)
        redis.call('ZREM', KEYS[2], member)
        redis.call('HSET', key, 'status', 'failed', 'ended_at', ARGV[8], 'meta', encoded, 'lvm_history', history)
        redis.call('HDEL', key, 'lvm_token')
        redis.call('ZADD', KEYS[4], math.floor(now / 1000) + ttl, id)
        if stream_type == 'none' or stream_type == 'stream' then
          redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 2, 'worker_name', owner)
          redis.call('EXPIRE', stream, ttl)
        end
        redis.call('EXPIRE', key, ttl)
        announce(KEYS[7], id, 'failed')
        failed = failed + 1
        out[#out + 1] = {id, 'failed', owner}
      end
    end
  end
end
count(KEYS[6], failed, tonumber(ARGV[10]))
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 86400000)
return out

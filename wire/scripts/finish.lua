-- finish: STARTED -> FINISHED | FAILED for every job of one batch, only where the caller's token
-- still owns the job (fencing: a late owner of a recovered job writes nothing).
--
-- KEYS: 1 lease zset, 2 RQ started registry, 3 finished registry, 4 failed registry,
--       5 stats finished key, 6 stats failed key, 7 event stream
-- ARGV: 1 token, 2 worker name, 3 ended_at, 4 job prefix, 5 results prefix, 6 stats ttl,
--       then 5 per job: id, outcome (finished|failed), ttl, value (base64), meta JSON ('' = keep)
-- Returns per job 'written', 'already' (a retry of this very write), 'stale' (not ours), 'gone'
-- (the job key was deleted or replaced by another type while it ran), 'canceled' (its submitter
-- canceled it while it ran: the result is discarded) or 'refused' (failed in place: its result
-- stream key holds another type, so the result could not be written).
local bad = wrong_types({{KEYS[1], 'zset'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}, {KEYS[4], 'zset'}})
if bad then return bad end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local out = {}
local counts = {finished = 0, failed = 0}
for i = 7, #ARGV, 5 do
  local id, outcome, ttl, value, meta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local key = ARGV[4] .. id
  local member = id .. ':' .. ARGV[1]
  local stream = ARGV[5] .. id
  if kind(key) ~= 'hash' then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    out[#out + 1] = 'gone'
  elseif redis.call('HGET', key, 'status') == 'canceled' then
    out[#out + 1] = 'canceled'  -- canceled while it ran (cancel.lua took the lease): discarded
  elseif redis.call('HGET', key, 'lvm_token') ~= ARGV[1] then
    out[#out + 1] = 'stale'
  elseif redis.call('HGET', key, 'status') ~= 'started' then
    out[#out + 1] = 'already'
  else
    local stream_type = kind(stream)
    local state = 'written'
    if stream_type ~= 'none' and stream_type ~= 'stream' then
      -- A producer made the result key first: fail the job in place, write nothing there.
      outcome, state = 'failed', 'refused'
      meta = cjson.encode({error = {error = 'bad_payload', message = 'key ' .. stream .. ' is a ' .. stream_type
        .. ', not a result stream, so the result could not be stored; do not create it before submitting'}})
    end
    redis.call('HSET', key, 'status', outcome, 'ended_at', ARGV[3])
    if meta ~= '' then redis.call('HSET', key, 'meta', meta) end
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    if state == 'refused' then
      redis.call('ZADD', KEYS[4], now_s + ttl, id)
    elseif outcome == 'finished' then
      redis.call('ZADD', KEYS[3], now_s + ttl, id)
      redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 1, 'worker_name', ARGV[2],
                 'execution_id', ARGV[1], 'return_value', value)
    else
      redis.call('ZADD', KEYS[4], now_s + ttl, id)
      redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 2, 'worker_name', ARGV[2],
                 'execution_id', ARGV[1], 'exc_string', value)
    end
    redis.call('EXPIRE', key, ttl)
    if state ~= 'refused' then redis.call('EXPIRE', stream, ttl) end
    announce(KEYS[7], id, outcome)
    counts[outcome] = counts[outcome] + 1
    out[#out + 1] = state
  end
end
count(KEYS[5], counts['finished'], tonumber(ARGV[6]))
count(KEYS[6], counts['failed'], tonumber(ARGV[6]))
return out

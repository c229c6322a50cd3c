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
--
-- Commands per written job: HMGET, the result's XADD, HSET and two EXPIREs; the registries'
-- ZREMs and ZADDs and the events once per batch, for all its members.
local bad = wrong_types({{KEYS[1], 'zset'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}, {KEYS[4], 'zset'}})
if bad then return bad end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local out = {}
local counts = {finished = 0, failed = 0}
local members, done, failed, done_ids, failed_ids = {}, {}, {}, {}, {}
for i = 7, #ARGV, 5 do
  local id, outcome, ttl, value, meta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local key = ARGV[4] .. id
  local member = id .. ':' .. ARGV[1]
  local stream = ARGV[5] .. id
  local ok, f = pcall(redis.call, 'HMGET', key, 'status', 'lvm_token')  -- an error: not a hash
  if not ok or (not f[1] and not f[2] and kind(key) ~= 'hash') then
    members[#members + 1] = member
    out[#out + 1] = 'gone'
  elseif f[1] == 'canceled' then
    out[#out + 1] = 'canceled'  -- canceled while it ran (cancel.lua took the lease): discarded
  elseif f[2] ~= ARGV[1] then
    out[#out + 1] = 'stale'
  elseif f[1] ~= 'started' then
    out[#out + 1] = 'already'
  else
    local state = 'written'
    local kind_no, field = 1, 'return_value'
    if outcome ~= 'finished' then kind_no, field = 2, 'exc_string' end
    local added = pcall(redis.call, 'XADD', stream, 'MAXLEN', '~', 10, '*', 'type', kind_no,
                        'worker_name', ARGV[2], 'execution_id', ARGV[1], field, value)
    if not added then
      -- A producer made the result key first: fail the job in place, write nothing there.
      outcome, state = 'failed', 'refused'
      meta = cjson.encode({error = {error = 'bad_payload', message = 'key ' .. stream .. ' is a ' .. kind(stream)
        .. ', not a result stream, so the result could not be stored; do not create it before submitting'}})
    end
    if meta ~= '' then
      redis.call('HSET', key, 'status', outcome, 'ended_at', ARGV[3], 'meta', meta)
    else
      redis.call('HSET', key, 'status', outcome, 'ended_at', ARGV[3])
    end
    members[#members + 1] = member
    local registry = outcome == 'finished' and done or failed
    registry[#registry + 1] = now_s + ttl
    registry[#registry + 1] = id
    redis.call('EXPIRE', key, ttl)
    if state ~= 'refused' then redis.call('EXPIRE', stream, ttl) end
    local announced = outcome == 'finished' and done_ids or failed_ids
    announced[#announced + 1] = id
    counts[outcome] = counts[outcome] + 1
    out[#out + 1] = state
  end
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('ZREM', KEYS[2], unpack(members))
end
if #done > 0 then redis.call('ZADD', KEYS[3], unpack(done)) end
if #failed > 0 then redis.call('ZADD', KEYS[4], unpack(failed)) end
announce_all(KEYS[7], done_ids, 'finished')
announce_all(KEYS[7], failed_ids, 'failed')
count(KEYS[5], counts['finished'], tonumber(ARGV[6]))
count(KEYS[6], counts['failed'], tonumber(ARGV[6]))
return out

-- release: STARTED -> QUEUED at the front of the queue, in order, for jobs the caller's token
-- still owns (a drain timeout or forced stop hands its batch back).
--
-- KEYS: 1 lease zset, 2 RQ started registry, 3 queue list, 4 event stream, 5 tenant ring
-- ARGV: 1 token, 2 job prefix, 3 tenant list prefix, then ids
-- An indexed job goes back to the front of its tenant's list as well (fair share's index).
-- Returns the ids handed back.
local bad = wrong_types({{KEYS[1], 'zset'}, {KEYS[2], 'zset'}, {KEYS[3], 'list'}, {KEYS[5], 'list'}})
if bad then return bad end
local out = {}
for i = #ARGV, 4, -1 do
  local id = ARGV[i]
  local key = ARGV[2] .. id
  local member = id .. ':' .. ARGV[1]
  if kind(key) == 'hash' and redis.call('HGET', key, 'lvm_token') == ARGV[1]
      and redis.call('HGET', key, 'status') == 'started' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'lvm_token')
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('LPUSH', KEYS[3], id)
    index_front(ARGV[3], KEYS[5], key, id)
    announce(KEYS[4], id, 'queued')
    out[#out + 1] = id
  else  -- not ours any more (or its key was replaced): only our own lease entries go
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
  end
end
return out

#!lua
-- Enqueue one chat job atomically, at most once. The same script serves ChatClient and raw
-- producers (redis-cli EVAL; Redis 7 for the shebang, which makes Redis refuse the whole script
-- up front at maxmemory rather than stop it halfway), so an idempotent submit works from any
-- language. No key of another type is written past: a script that failed halfway would leave a
-- job hash that a retry takes for "already enqueued".
--
-- KEYS: 1 rq:job:<id>, 2 rq:queue:<queue>, 3 rq:queues, 4 lvm:idem:<queue>:<key> (any key if unused)
-- ARGV: 1 job id, 2 queue ttl (s), 3 idempotency ttl (s; 0 = no idempotency key),
--       then the job hash as field, value, field, value, ...
-- Returns the id of the job that answers this submit: the first one's, on a repeat.
local function wrongtype(key, want)
  return redis.error_reply('LVMQ_WRONGTYPE key ' .. key .. ' is a ' .. redis.call('TYPE', key)['ok'] .. ', not a ' ..
    want .. '; something other than lvm-queue wrote it: rename or delete it')
end
if tonumber(ARGV[3]) > 0 then
  local ok, first = pcall(redis.call, 'GET', KEYS[4])
  if not ok then return wrongtype(KEYS[4], 'string') end
  if first then return first end
end
-- A retry of this very submit (same id) after an ambiguous failure: already enqueued.
local job_type = redis.call('TYPE', KEYS[1])['ok']
if job_type == 'hash' then return ARGV[1] end
if job_type ~= 'none' then
  return redis.error_reply('LVMQ_BADID key ' .. KEYS[1] .. ' exists and is a ' .. job_type .. '; use another job id')
end
-- The two writes that can meet a key of another type go first, each refused before the job is
-- written (the queue's name in rq:queues, written when only the push is refused, registers
-- nothing that was not asked for). No TYPE call per submit for them.
if not pcall(redis.call, 'SADD', KEYS[3], KEYS[2]) then return wrongtype(KEYS[3], 'set') end
if not pcall(redis.call, 'RPUSH', KEYS[2], ARGV[1]) then return wrongtype(KEYS[2], 'list') end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[3]))
end
return ARGV[1]

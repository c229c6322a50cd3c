-- Enqueue one chat job atomically, at most once. The same script serves ChatClient and raw
-- producers (redis-cli EVAL), so an idempotent submit works from any language.
--
-- KEYS: 1 rq:job:<id>, 2 rq:queue:<queue>, 3 rq:queues, 4 lvm:idem:<queue>:<key> (any key if unused)
-- ARGV: 1 job id, 2 queue ttl (s), 3 idempotency ttl (s; 0 = no idempotency key),
--       then the job hash as field, value, field, value, ...
-- Returns the id of the job that answers this submit: the first one's, on a repeat.
if tonumber(ARGV[3]) > 0 then
  local first = redis.call('GET', KEYS[4])
  if first then return first end
end
-- A retry of this very submit (same id) after an ambiguous failure: already enqueued.
if redis.call('EXISTS', KEYS[1]) == 1 then return ARGV[1] end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[3]))
end
return ARGV[1]

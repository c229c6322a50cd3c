-- beat: a worker's heartbeat, and its entry in the registry health reads (never a SCAN).
--
-- KEYS: 1 lvm:heartbeat:<worker>, 2 lvm:workers (zset), 3 lvm:drain:<worker> (drain.lua)
-- ARGV: 1 worker name, 2 heartbeat JSON, 3 ttl ms, 4 '1' to write it, '0' to delete it (clean stop)
-- Returns 1 when an operator asked this worker to drain (the request stays until it exits), else 0.
-- Runs at maxmemory (allow-oom): a heartbeat overwrites a value of the same size, and a worker
-- whose heartbeat lapsed during an OOM episode would read as dead when it is only waiting.
local bad = wrong_types({{KEYS[2], 'zset'}})
if bad then return bad end
local now = now_ms()
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[2], now, ARGV[1])
else
  redis.call('DEL', KEYS[1], KEYS[3])  -- a drain request is done with once its worker has left
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 86400000)  -- gone for a day: forgotten
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 1 end
return 0

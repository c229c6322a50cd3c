-- slots: one API key's open waits (event streams, streamed completions, waiting reads), counted in
-- Redis so that every gateway process shares one allowance per key. Each slot is a member of the
-- key's zset, scored with its lease's end on Redis's clock; its gateway renews the leases it holds,
-- so a gateway that dies frees its slots when their leases end.
--
-- KEYS: 1 the key's slots (lvm:gateway:waits:<owner>)
-- ARGV: 1 'take' | 'renew' | 'drop', 2 lease ms, 3 limit (take), then slot ids
-- Returns take: {1, held} (taken) or {0, held} (the key holds its limit; nothing written);
-- renew: how many of the ids were still there; drop: how many were removed.
local bad = wrong_types({{KEYS[1], 'zset'}})
if bad then return bad end
local now, lease = now_ms(), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'take' then
  local held = redis.call('ZCARD', KEYS[1])
  if held >= tonumber(ARGV[3]) then return {0, held} end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  return {1, held + 1}
end
local n = 0
for i = 4, #ARGV do
  if ARGV[1] == 'renew' then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
  else
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
if ARGV[1] == 'renew' and n > 0 then redis.call('PEXPIRE', KEYS[1], lease * 2) end
return n

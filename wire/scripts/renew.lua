-- renew: push the leases a worker still holds forward, and mark its incarnation alive.
--
-- KEYS: 1 alive zset, then one lease zset per queue
-- ARGV: 1 incarnation, 2 lease ms, 3 job prefix, then the leases held, as <id>:<token>
-- Returns the ids (or members) it no longer owns: recovered while it was cut off, or a job key
-- deleted or replaced by another type since the claim.
local checks = {}
for k = 1, #KEYS do checks[k] = {KEYS[k], 'zset'} end
local bad = wrong_types(checks)
if bad then return bad end
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
local lost = {}
for i = 4, #ARGV do
  local member = ARGV[i]
  local id, token = string.match(member, '^(.*):([^:]*)$')
  local key = ARGV[3] .. (id or '')
  local renewed = false
  if id and kind(key) == 'hash' and redis.call('HGET', key, 'lvm_token') == token
      and redis.call('HGET', key, 'status') == 'started' then
    for k = 2, #KEYS do
      if redis.call('ZSCORE', KEYS[k], member) then
        redis.call('ZADD', KEYS[k], 'XX', now + tonumber(ARGV[2]), member)
        renewed = true
      end
    end
  end
  if not renewed and not (id and kind(key) == 'hash' and redis.call('HGET', key, 'status') == 'canceled') then
    lost[#lost + 1] = id or member  -- a canceled job is not lost: its submitter let it go
  end
end
return lost

-- pause: RUNNING <-> PAUSED for a queue. While paused, claim.lua takes nothing from it (a batch
-- already claimed finishes) and admit.lua refuses new submits with the reason; queued jobs wait.
-- Idempotent: pausing a paused queue keeps its first reason and says 'already'.
--
-- KEYS: 1 the pause flag (lvm:paused:<queue>)
-- ARGV: 1 'pause' or 'resume', 2 reason, 3 operator
-- Returns 'paused' | 'resumed' (now) or 'already' (it was so before).
local bad = wrong_types({{KEYS[1], 'hash'}})
if bad then return bad end
local was = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[1] == 'pause' then
  if was then return 'already' end
  redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'by', ARGV[3], 'at_ms', now_ms())
  return 'paused'
elseif ARGV[1] == 'resume' then
  if not was then return 'already' end
  redis.call('DEL', KEYS[1])
  return 'resumed'
end
return redis.error_reply("LVMQ_BADARG ARGV[1] must be 'pause' or 'resume'")

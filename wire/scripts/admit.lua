-- admit: a submit behind its queue's admission bound and its tenant's queued cap, with a deadline,
-- indexed for fair share (docs/gateway.md, "Fair share"), in one step.
-- wire/lua.py puts the guarded submit above this as run(KEYS, ARGV).
--
-- KEYS: submit.lua's own (1 job hash, 2 queue list, 3 rq:queues, 4 idempotency key), then
--       5 the tenant's interactive list, 6 its batch list, 7 the queue's tenant ring, 8 its fair state,
--       9 the queue's pause flag (pause.lua), 10 this minute's refused counter (lvm:stats:<queue>:<minute>:refused),
--       11 the queue's light-lane wake list (prelude.lua wake_lane; callers that predate it leave it out)
-- ARGV: 1 max queued (0 = no bound), 2 deadline ms from now (0 = none), 3 tenant, 4 class ('i' or
--       'b'), 5 weight (1-1000), 6 the tenant's queued cap (0 = none), 7 cost (1-1000), then
--       submit.lua's own (so ARGV[8] is the job id, ARGV[10] the idempotency ttl)
-- Returns {1, <job id>} when admitted (or answered by an earlier submit); {0, <queue depth>} when
-- the queue holds max queued jobs, {2, <tenant's queued>} when the tenant holds its cap, {3, <reason>}
-- when an operator paused the queue: nothing is written then but the refused counter (the ops page's).
local bound, deadline_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local tenant, class = ARGV[3], ARGV[4]
local weight, cap, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
-- Anyone who can write Redis can run this script: its arguments are checked like a job's fields.
if not valid_tenant(tenant) then
  return redis.error_reply('LVMQ_BADARG tenant must be 1-' .. TENANT_MAX .. " letters, digits, '.', '_' or '-'")
end
if class ~= 'i' and class ~= 'b' then return redis.error_reply("LVMQ_BADARG class must be 'i' or 'b'") end
if not (weight and weight >= 1 and weight <= 1000 and cap and cap >= 0 and cost and cost >= 1 and cost <= 1000) then
  return redis.error_reply('LVMQ_BADARG weight 1-1000, cap >= 0 and cost 1-1000 are numbers')
end
local bad = wrong_types({{KEYS[2], 'list'}, {KEYS[5], 'list'}, {KEYS[6], 'list'}, {KEYS[7], 'list'},
                         {KEYS[8], 'hash'}, {KEYS[9], 'hash'}, {KEYS[10], 'string'}})
if bad then return bad end
-- A repeat (same idempotency key, or this very job id after an ambiguous reply) is answered
-- whatever the depth: it adds nothing to the queue, and nothing to the index.
local fresh = redis.call('EXISTS', KEYS[1]) == 0
  and not (tonumber(ARGV[10]) > 0 and redis.call('EXISTS', KEYS[4]) == 1)
local function refuse(code, why)
  redis.call('INCR', KEYS[10])
  redis.call('EXPIRE', KEYS[10], STATS_TTL_S)
  return {code, why}
end
if fresh then
  if redis.call('EXISTS', KEYS[9]) == 1 then
    return refuse(3, redis.call('HGET', KEYS[9], 'reason') or 'paused by an operator')
  end
  if bound > 0 then
    local depth = redis.call('LLEN', KEYS[2])
    if depth >= bound then return refuse(0, depth) end
  end
  if cap > 0 then
    local held = redis.call('LLEN', KEYS[5]) + redis.call('LLEN', KEYS[6])
    if held >= cap then return refuse(2, held) end
  end
end
local args = {unpack(ARGV, 8)}
args[#args + 1] = 'lvm_tenant'
args[#args + 1] = tenant
args[#args + 1] = 'lvm_class'
args[#args + 1] = class
args[#args + 1] = 'lvm_cost'
args[#args + 1] = cost
if deadline_ms > 0 then
  -- Written with the job, in its one HSET (a repeat writes nothing: the first deadline stands).
  -- Redis's clock, read by claim.lua on the same clock: no host clocks compared.
  args[#args + 1] = 'lvm_deadline'
  args[#args + 1] = now_ms() + deadline_ms
end
local reply = run(KEYS, args)
if type(reply) == 'table' and reply['err'] then return reply end
if fresh and reply == ARGV[8] then  -- pushed now: index it in the same step
  redis.call('RPUSH', KEYS[class == 'i' and 5 or 6], reply)
  redis.call('HSET', KEYS[8], 'w:' .. tenant, weight)
  if not redis.call('LPOS', KEYS[7], tenant) then redis.call('RPUSH', KEYS[7], tenant) end
  -- a light tenant's interactive job while a light lane is live: the lane's, so wake it (claim.lua)
  if class == 'i' and redis.call('LLEN', KEYS[5]) <= live_light_max(KEYS[8], now_ms()) then wake_lane(KEYS[11]) end
end
return {1, reply}

-- admit: a submit behind its queue's admission bound and with a deadline, in one step.
-- wire/lua.py puts the guarded submit above this as run(KEYS, ARGV).
--
-- KEYS: submit.lua's own (1 job hash, 2 queue list, 3 rq:queues, 4 idempotency key)
-- ARGV: 1 max queued (0 = no bound), 2 deadline ms from now (0 = none), then submit.lua's own
--       (so ARGV[3] is the job id, ARGV[5] the idempotency ttl)
-- Returns {1, <job id>} when admitted (or answered by an earlier submit), {0, <queue depth>} when
-- the queue already holds max queued jobs: nothing is written then.
local bound, deadline_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
if bound > 0 then
  local depth = redis.call('LLEN', KEYS[2])
  -- A repeat (same idempotency key, or this very job id after an ambiguous reply) is answered
  -- whatever the depth: it adds nothing to the queue. Looked up only at the bound.
  if depth >= bound and redis.call('EXISTS', KEYS[1]) == 0
      and not (tonumber(ARGV[5]) > 0 and redis.call('EXISTS', KEYS[4]) == 1) then
    return {0, depth}
  end
end
local args = {unpack(ARGV, 3)}
if deadline_ms > 0 then
  -- Written with the job, in its one HSET (a repeat writes nothing: the first deadline stands).
  -- Redis's clock, read by claim.lua on the same clock: no host clocks compared.
  args[#args + 1] = 'lvm_deadline'
  args[#args + 1] = now_ms() + deadline_ms
end
local reply = run(KEYS, args)
if type(reply) == 'table' and reply['err'] then return reply end
return {1, reply}

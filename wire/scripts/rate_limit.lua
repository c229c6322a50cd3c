-- A script behind the caller's token bucket, as one script: one round trip, and a refused call
-- changes nothing but the bucket. wire/lua.py puts the guarded script above this as run(KEYS, ARGV).
--
-- KEYS: the guarded script's own, then the bucket (lvm:gateway:rate:<owner>)
-- ARGV: 1 rate (tokens/s), 2 burst, then the guarded script's own
-- Returns {1, <the guarded script's reply>}, or {0, <ms until a token>} when refused.

-- Refill by elapsed time (Redis's clock, shared by every gateway process), take a token or say
-- how long until one is there.
local function take_token(key, rate, burst)
  local bad = wrong_types({{key, 'hash'}})
  if bad then return bad, 0 end
  local now = now_ms()
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(state[1]), tonumber(state[2])
  if not tokens or not ts then tokens, ts = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  local allowed, wait_ms = 0, 0
  if tokens >= 1 then
    tokens, allowed = tokens - 1, 1
  else
    wait_ms = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  return allowed, wait_ms
end

local allowed, wait_ms = take_token(KEYS[#KEYS], tonumber(ARGV[1]), tonumber(ARGV[2]))
if type(allowed) == 'table' then return allowed end
if allowed == 0 then return {0, wait_ms} end
local reply = run({unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 3)})
if type(reply) == 'table' and reply['err'] then return reply end  -- the guarded script's error, as its own
return {1, reply}

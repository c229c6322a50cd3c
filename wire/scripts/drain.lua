-- drain: ask one worker to drain (finish its batch, claim nothing more, exit), as its first
-- SIGTERM would; the worker reads the request on its next heartbeat (worker/heartbeat.py) and
-- deletes it as it exits. Idempotent: a second request while one is pending says 'already'.
--
-- KEYS: 1 the request (lvm:drain:<worker>), 2 the worker's heartbeat key
-- ARGV: 1 operator, 2 ttl (s: a request no worker picks up lapses)
-- Returns 'requested', 'already' or 'absent' (no live worker by that name: nothing written).
local bad = wrong_types({{KEYS[1], 'string'}})
if bad then return bad end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'absent' end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return 'requested' end
return 'already'

-- cancel: QUEUED | STARTED -> CANCELED in one step, for the job's owner; an ended job stays ended.
-- A queued job leaves its queue (no worker ever takes it); a started one loses its lease and its
-- token, so the worker's finish finds the token gone and discards the result ('stale'): one job,
-- at most one outcome, as for a recovered job.
--
-- KEYS: 1 the job hash, 2 event stream
-- ARGV: 1 job id, 2 owner ids, comma-separated ('' = any: ChatClient and raw producers, who can write Redis anyway),
--       3 ended_at (RQ time), 4 ttl (s), 5 result prefix, then the prefixes of 6 queues, 7 lease zsets,
--       8 RQ started registries, 9 RQ canceled registries, 10 fair share's (lvm:fair:); a queued
--       job leaves its tenant's list too
-- Returns {outcome, status}: 'canceled' (now; status: what it was, queued or started), 'already'
-- (canceled before), 'ended' (it had ended: status says how) or 'absent' (no such job, or not the
-- caller's: the same answer for both).
local key = KEYS[1]
if kind(key) ~= 'hash' then return {'absent', ''} end
local f = redis.call('HMGET', key, 'status', 'lvm_owner', 'origin', 'lvm_token', 'meta')
local status, owner, origin, token, meta = f[1], f[2] or '', f[3] or '', f[4], f[5]
-- any of the caller's owner ids: during a secret rotation its jobs carry the old one or the new one
if ARGV[2] ~= '' and not string.find(',' .. ARGV[2] .. ',', ',' .. owner .. ',', 1, true) then return {'absent', ''} end
if status == 'canceled' then return {'already', status} end
if status ~= 'queued' and status ~= 'started' then return {'ended', status or ''} end
if not string.match(origin, '^[A-Za-z0-9_.:-]+$') then return {'ended', 'unknown origin'} end
local queue, leases = ARGV[6] .. origin, ARGV[7] .. origin
local started, canceled = ARGV[8] .. origin, ARGV[9] .. origin
local stream = ARGV[5] .. ARGV[1]
local bad = wrong_types({{queue, 'list'}, {leases, 'zset'}, {started, 'zset'}, {canceled, 'zset'}, {stream, 'stream'}})
if bad then return bad end
local ok, decoded = pcall(cjson.decode, meta or '{}')
if not ok or type(decoded) ~= 'table' then decoded = {} end
decoded['error'] = {error = 'canceled', message = 'canceled by its submitter before it ended'}
local encoded_ok, encoded = pcall(cjson.encode, decoded)
if not encoded_ok then encoded = cjson.encode({error = decoded['error']}) end
-- every check above, every write below
if status == 'queued' then
  redis.call('LREM', queue, 1, ARGV[1])
  local list = fair_entry(ARGV[10] .. origin .. ':q:', key)
  if list then pcall(redis.call, 'LREM', list, 1, ARGV[1]) end
elseif token then
  redis.call('ZREM', leases, ARGV[1] .. ':' .. token)
  redis.call('ZREM', started, ARGV[1] .. ':' .. token)
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', key, 'status', 'canceled', 'ended_at', ARGV[3], 'meta', encoded)
redis.call('HDEL', key, 'lvm_token')
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', canceled, math.floor(now_ms() / 1000) + ttl, ARGV[1])
redis.call('XADD', stream, 'MAXLEN', '~', 10, '*', 'type', 3, 'worker_name', '', 'exc_string', '')
redis.call('EXPIRE', stream, ttl)
announce(KEYS[2], ARGV[1], 'canceled')
return {'canceled', status}

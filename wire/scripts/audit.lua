-- audit: an operator's action and its record in the audit stream, in one step: no action without
-- its record, no record of an action that did not happen. wire/lua.py puts the audited script
-- above this as run(KEYS, ARGV) (lifecycle scripts are audited the same way: cancel, admit).
--
-- KEYS: the audited script's own, then the audit stream (lvm:audit)
-- ARGV: 1 operator (the admin key's name), 2 action, 3 target (a queue, job or worker), 4 detail
--       (free text: a reason, the job a replay came from), then the audited script's own
-- Returns the audited script's reply; the stream entry holds it as 'outcome' (its first element
-- where it is a table), with Redis's time.
-- The stream is checked before the action runs: an action whose record could not be written
-- must not happen either (Redis does not roll a script back).
local bad = wrong_types({{KEYS[#KEYS], 'stream'}})
if bad then return bad end
local reply = run({unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 5)})
if type(reply) == 'table' and reply['err'] then return reply end
local outcome = reply
if type(reply) == 'table' then outcome = reply[1] end
redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', AUDIT_MAXLEN, '*', 'operator', ARGV[1], 'action', ARGV[2],
           'target', ARGV[3], 'detail', ARGV[4], 'outcome', tostring(outcome), 'at_ms', now_ms())
return reply

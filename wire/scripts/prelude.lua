-- Shared by every script but submit.lua's raw form: wire/lua.py puts the Python side's constants
-- (EVENTS_MAXLEN, WIP_GRACE_S, JOB_ID_MAX, JOB_ID_CLASS) above this, then these helpers, then the
-- script itself.

-- Redis's clock in milliseconds: one clock for every worker and gateway, whatever their hosts say.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The job-id rule (wire/keys.py: JOB_ID and JOB_ID_LUA_CLASS say the same).
local function valid_job_id(id)
  return #id >= 1 and #id <= JOB_ID_MAX and string.match(id, '^[' .. JOB_ID_CLASS .. ']+$') ~= nil
end

-- One entry on the job event stream, in the same step as the change it announces.
local function announce(stream, id, status)
  redis.call('XADD', stream, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'job', id, 'status', status)
end

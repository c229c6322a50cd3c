-- claim: QUEUED -> STARTED for up to ARGV[1] jobs, chosen by fair share: deficit round robin over
-- the tenants with queued jobs, weighted, interactive before batch within a tenant's turn (docs/
-- gateway.md, "Fair share"). Takes the ids and leases them in the same step, so a claimed job is
-- never in neither the queue nor a registry.
--
-- KEYS: 1 queue list, 2 lease zset, 3 RQ started registry, 4 event stream, 5 tenant ring, 6 fair state,
--       7 the queue's pause flag (pause.lua), 8 the queue's light-lane wake list (prelude.lua wake_lane)
-- ARGV: 1 max jobs, 2 worker name, 3 token, 4 lease ms, 5 value cap (bytes), 6 started_at,
--       7 job key prefix, 8 max fields, 9 tenant list prefix, 10 batch every (a tenant's batch job
--       goes after at most this many of its interactive ones), 11 quantum (cost per turn and unit
--       of weight), 12 batch jobs left (the most batch-class jobs this call may take while the queue
--       yields, see below), 13 yield window ms (0: never yield), 14 light limit (a light lane's: the
--       most interactive jobs a tenant may have queued and still count as light; 0: none is), 15 lane
--       ('light': this worker serves light tenants' interactive jobs only; 'all': every job), then the
--       acted-on field names
-- Returns per entry {'claimed', id, fields, stripped, status, left} or {'dropped', entry, why}; left
-- is the ms until the job's lvm_deadline (Redis's clock, written by admit.lua; '' when it has none);
-- last, {'picked', batch jobs taken, yielding 0|1, capped 0|1, interactive jobs taken} (capped: the
-- call stopped with work left that it may not take -- the batch cap, or jobs held for a light lane,
-- or on a light lane nothing light -- so a worker filling its batch stops asking, and one that took
-- nothing polls instead of blocking on a list that is not empty).
-- A paused queue returns {{'paused'}}: nothing claimed (the worker waits, it does not spin).
--
-- Yielding at the batch's granularity: a worker computes a batch to its end, so an interactive job
-- that arrives while a full batch of batch-class jobs computes waits for all of it (~160 ms for 32
-- on a 2-core CPU, against ~20 ms for the job alone). While an interactive job was claimed from
-- this queue in the last ARGV[13] ms (state field 'interactive_at', Redis's clock, shared by every
-- worker), a claim takes at most ARGV[12] batch-class jobs, so batch work runs in small batches
-- and an interactive arrival waits for a small one; and a claim that took an interactive job takes
-- no batch job after it, so the interactive job computes without them (a batch of 4 batch jobs
-- beside it measured ~35 ms against ~20 alone). A backlog with no interactive traffic keeps full
-- batches. Batch's starvation bound holds: a due batch job is a claim's first pick.
--
-- Light lanes, for a light tenant's latency beside a flooding one: fair share decides which jobs go
-- into the next batch, but a light tenant's job that arrives while a flooding tenant's batch of 32
-- computes waits for all of it (12x its latency alone at the default batch on a 2-core CPU). A
-- worker started with LVM_LANE=light claims only the interactive jobs of tenants with at most
-- ARGV[14] of them queued (light: they keep up), and never a flooding tenant's, so it is free when
-- a light job arrives. Each of its claims stamps 'light_at' and its limit 'light_max' in the fair
-- state (Redis's clock); while a stamp is younger than LIGHT_LIVE_MS, an 'all' worker leaves the
-- interactive jobs of tenants within the stamped limit to the light lane (it still takes their
-- batch jobs): one that took them into a full batch would make them wait for it after all. The
-- limit comes from the stamp, not from the 'all' worker's own setting: a worker holding what no
-- lane serves (a lane set to 2, another worker to 4) would strand the jobs in between. A light
-- lane that dies stops stamping, and within LIGHT_LIVE_MS the other workers serve those tenants
-- again; a tenant past the limit (a burst) is served by fair share as before. The light lane's picks
-- leave the round robin's deficits alone: the capacity it serves is capacity no flooding tenant
-- could have had. A light lane with nothing light to take blocks on the queue's wake list, pushed
-- by admit.lua when a light job arrives and here when an 'all' worker leaves light jobs to the lane
-- (a tenant that became light as fair share took it down to the limit): polling instead, every
-- 2 ms beside a flood, cost the lane 0.08 of a core and Redis 0.03 doing nothing.
--
-- Which ids: while the queue list's head is a job nobody indexed (RQ's own enqueue, a raw
-- submit.lua, garbage), that head, in order; otherwise the next of the tenants' round robin,
-- removed from the queue list too (LREM: O(its position), a scan Redis does in C). When no tenant
-- has work but the list does (an index someone deleted), the head, in order: no job is stranded.
-- Commands per job: about a dozen reads and writes of the index, then HLEN, HGETALL, HSET and
-- PERSIST; the registries' ZADDs and the 'started' event once per batch.
local ACTED_FROM = 16
local LIGHT_SCAN = 256  -- ring entries a light claim looks at, from a cursor that moves on each claim
local bad = wrong_types({{KEYS[1], 'list'}, {KEYS[2], 'zset'}, {KEYS[3], 'zset'}, {KEYS[5], 'list'},
                         {KEYS[6], 'hash'}})
if bad then return bad end
-- Race named here: a pause between two claims. The flag is read in the same step as the take, so
-- once pause.lua has run no claim takes a job; a batch claimed before it runs to its end.
if redis.call('EXISTS', KEYS[7]) == 1 then return {{'paused'}} end
local now = now_ms()
local lease_until = now + tonumber(ARGV[4])
local wip_until = math.floor(lease_until / 1000) + WIP_GRACE_S
local cap = tonumber(ARGV[5])
local max_fields = tonumber(ARGV[8])
local busy = {started = 1, finished = 1, failed = 1, stopped = 1, canceled = 1}
local acted = {}
for i = ACTED_FROM, #ARGV do acted[ARGV[i]] = true end
local out = {}
local leases, wips, started = {}, {}, {}

-- The job's fields as the reply carries them (acted-on ones left out: they are deleted), its
-- status, deadline, and the acted-on fields it had set (stripped) and had at all (to delete).
local function read(key, n)
  if n > max_fields then  -- not read back whole: the reply stays bounded
    local f = redis.call('HMGET', key, 'status', 'lvm_deadline')
    local present, stripped = {}, {}
    local values = redis.call('HMGET', key, unpack(ARGV, ACTED_FROM))
    for i = ACTED_FROM, #ARGV do
      local v = values[i - ACTED_FROM + 1]
      if v then
        present[#present + 1] = ARGV[i]
        if v ~= '' then stripped[#stripped + 1] = ARGV[i] end
      end
    end
    return {'\0fields', tostring(n)}, f[1], f[2], stripped, present
  end
  local raw = redis.call('HGETALL', key)
  local fields, stripped, present = {}, {}, {}
  local status, deadline = false, false
  local total = 0
  for j = 1, #raw, 2 do
    local name, value = raw[j], raw[j + 1]
    if acted[name] then
      present[#present + 1] = name
      if value ~= '' then stripped[#stripped + 1] = name end
    else
      if name == 'status' then status = value elseif name == 'lvm_deadline' then deadline = value end
      fields[#fields + 1] = name
      if #value > cap then
        fields[#fields + 1] = '\0oversize:' .. #value
      else
        fields[#fields + 1] = value
        total = total + #value
      end
    end
  end
  if total > cap then  -- many fields just under the cap: the reply itself stays bounded
    fields = {'\0total', tostring(total)}
  end
  return fields, status, deadline, stripped, present
end

local prefix, ring, state = ARGV[9], KEYS[5], KEYS[6]
local batch_every, quantum = tonumber(ARGV[10]), tonumber(ARGV[11])
local batch_left, window = tonumber(ARGV[12]) or 0, tonumber(ARGV[13]) or 0
local seen = tonumber(redis.call('HGET', state, 'interactive_at') or '') or 0
local yielding = window > 0 and seen <= now and now - seen < window  -- a time ahead of Redis's: not ours
local batch_taken, interactive_taken, capped, passed = 0, 0, false, 0
local light_max, lane = light_limit(ARGV[14]), ARGV[15] or 'all'
if lane ~= 'light' then light_max = live_light_max(state, now) end  -- what a live lane serves
local light_live = lane ~= 'light' and light_max > 0
local held_light = false  -- light jobs left to the lane by this claim: wake it

local function llen(list)
  local ok, n = pcall(redis.call, 'LLEN', list)
  return ok and n or 0
end

local function cost_of(id)
  local ok, c = pcall(redis.call, 'HGET', ARGV[7] .. id, 'lvm_cost')
  c = ok and tonumber(c) or 1
  return math.max(1, math.min(1000, c or 1))
end

-- The next id of the round robin, taken off its tenant's list, or nil when no tenant has work.
-- The ring's head is the tenant whose turn runs; state 'turn' names it once it got its quantum
-- (deficit += quantum x weight), so a turn spread over several claims is topped up once. A turn
-- ends when the head job costs more than the deficit left: the tenant goes to the ring's back.
-- A tenant with no queued job leaves the ring and loses its deficit (classic DRR). While the
-- queue yields (above), a tenant whose next job would be batch-class past the cap is passed over.
local function next_fair()
  local turn = redis.call('HGET', state, 'turn') or ''
  for _ = 1, 1000 do  -- each pass serves, rotates or removes; 1000 bounds the script
    local t = redis.call('LINDEX', ring, 0)
    if not t then return nil end
    local li, lb = prefix .. t .. ':i', prefix .. t .. ':b'
    local ni, nb = 0, 0
    if valid_tenant(t) then ni, nb = llen(li), llen(lb) end
    if ni + nb == 0 then
      redis.call('LPOP', ring)
      redis.call('HDEL', state, 'd:' .. t, 's:' .. t, 'w:' .. t)
      if turn == t then turn = '' end
    else
      local light = light_live and ni <= light_max  -- its interactive jobs are the light lane's (above)
      if light and ni > 0 then ni, held_light = 0, true end
      local since = tonumber(redis.call('HGET', state, 's:' .. t) or '') or 0
      local batch = nb > 0 and (ni == 0 or since >= batch_every)  -- batch's starvation bound
      if ni + nb == 0 or (batch and yielding and (batch_taken >= batch_left or interactive_taken > 0)) then
        -- The yield cap, or only light work left: t's turn ends with its deficit as it is (no
        -- quantum for a turn it did not take) and the round robin goes on, to a tenant that may
        -- have work for this claim. Once every tenant in the ring was passed over in a row, the
        -- claim stops: capped.
        if turn == t then turn = '' end
        redis.call('HSET', state, 'turn', turn)
        redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
        passed = passed + 1
        if passed >= redis.call('LLEN', ring) then
          capped = true
          return nil
        end
      else
        local deficit = tonumber(redis.call('HGET', state, 'd:' .. t) or '') or 0
        if turn ~= t then
          local weight = math.max(1, math.min(1000, tonumber(redis.call('HGET', state, 'w:' .. t) or '') or 1))
          deficit, turn = deficit + quantum * weight, t
        end
        local list = batch and lb or li
        local id = redis.call('LINDEX', list, 0)
        local cost = valid_job_id(id) and cost_of(id) or 1
        if deficit >= cost then
          redis.call('LPOP', list)
          if batch then
            batch_taken = batch_taken + 1
          else
            interactive_taken = interactive_taken + 1
            yielding = window > 0  -- from this pick on, this claim yields too
          end
          passed = 0
          since = batch and 0 or (nb > 0 and since + 1 or 0)
          redis.call('HSET', state, 'd:' .. t, deficit - cost, 's:' .. t, since, 'turn', turn)
          return id
        end
        redis.call('HSET', state, 'd:' .. t, deficit, 'turn', '')
        redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
        turn = ''
      end
    end
  end
  redis.call('HSET', state, 'turn', turn)
  -- The pass bound ran out while tenants were being passed over (a ring of over a thousand): stop
  -- as capped, or the caller would read "no tenant has work" and take the queue's head past the cap.
  if passed > 0 then capped = true end
  return nil
end

-- A light lane's ids (above): the interactive heads of the light tenants among LIGHT_SCAN ring
-- entries from its cursor, one per tenant per pass, each taken off the queue list in the same step.
local function light_ids(max)
  if light_max == 0 then  -- serves no one: no stamp, or the others would hold work for it
    if redis.call('LLEN', KEYS[1]) > 0 then capped = true end
    return {}
  end
  redis.call('HSET', state, 'light_at', now, 'light_max', light_max)
  local n = redis.call('LLEN', ring)
  local cursor = tonumber(redis.call('HGET', state, 'light_cursor') or '') or 0
  if cursor < 0 or cursor >= n then cursor = 0 end
  redis.call('HSET', state, 'light_cursor', cursor + LIGHT_SCAN)
  local seen, lists, got = {}, {}, {}
  for _, t in ipairs(redis.call('LRANGE', ring, cursor, cursor + LIGHT_SCAN - 1)) do seen[t] = true; lists[#lists + 1] = t end
  for _, t in ipairs(redis.call('LRANGE', ring, 0, LIGHT_SCAN - 1 - #lists)) do
    if not seen[t] then seen[t] = true; lists[#lists + 1] = t end
  end
  local light = {}
  for _, t in ipairs(lists) do
    if valid_tenant(t) then
      local ni = llen(prefix .. t .. ':i')
      if ni > 0 and ni <= light_max then light[#light + 1] = prefix .. t .. ':i' end
    end
  end
  local more = true
  while more and #got < max do
    more = false
    for _, list in ipairs(light) do
      if #got >= max then break end
      local id = redis.call('LPOP', list)
      if id then
        more = true
        if redis.call('LREM', KEYS[1], 1, id) == 1 then
          got[#got + 1] = id
          interactive_taken = interactive_taken + 1
        else
          out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'indexed but no longer in its queue (canceled, or taken)'}
        end
      end
    end
  end
  -- nothing light, but the queue holds work: the caller polls rather than blocks on a full list
  if #got == 0 and redis.call('LLEN', KEYS[1]) > 0 then capped = true end
  return got
end

local ids = {}
if lane == 'light' then ids = light_ids(tonumber(ARGV[1])) end
for _ = 1, lane == 'light' and 0 or tonumber(ARGV[1]) * 4 + 16 do  -- stale index entries cost a pass each; bounded
  if #ids >= tonumber(ARGV[1]) then break end
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local id = (valid_job_id(head) and fair_entry(prefix, ARGV[7] .. head)) and next_fair() or nil
  if capped then break end
  if id == nil then  -- an unindexed head, or no tenant has work: the head, in order
    redis.call('LPOP', KEYS[1])
    ids[#ids + 1] = head
  elseif redis.call('LREM', KEYS[1], 1, id) == 1 then
    ids[#ids + 1] = id
  else
    out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'indexed but no longer in its queue (canceled, or taken)'}
  end
end
for _, id in ipairs(ids) do
  if not valid_job_id(id) then
    out[#out + 1] = {'dropped', string.sub(id, 1, 64), 'queue entry is not a job id'}
  else
    local key = ARGV[7] .. id
    local ok, n = pcall(redis.call, 'HLEN', key)  -- 0: no such key; an error: not a hash
    if not ok then
      out[#out + 1] = {'dropped', id, 'job key is a ' .. kind(key) .. ', not a hash'}
    elseif n == 0 then
      out[#out + 1] = {'dropped', id, 'no job hash (expired before a worker took it, or never written)'}
    else
      local fields, status, deadline, stripped, present = read(key, n)
      if status and busy[status] then
        out[#out + 1] = {'dropped', id, 'job is already ' .. status .. ' (its id was queued twice)'}
      else
        if #present > 0 then redis.call('HDEL', key, unpack(present)) end
        local member = id .. ':' .. ARGV[3]
        redis.call('HSET', key, 'status', 'started', 'worker_name', ARGV[2], 'started_at', ARGV[6],
                   'last_heartbeat', ARGV[6], 'lvm_token', ARGV[3])
        redis.call('PERSIST', key)
        leases[#leases + 1] = lease_until
        leases[#leases + 1] = member
        wips[#wips + 1] = wip_until
        wips[#wips + 1] = member
        started[#started + 1] = id
        deadline = tonumber(deadline or '')
        out[#out + 1] = {'claimed', id, fields, stripped, status or '', deadline and tostring(deadline - now) or ''}
      end
    end
  end
end
if #leases > 0 then
  redis.call('ZADD', KEYS[2], unpack(leases))
  redis.call('ZADD', KEYS[3], unpack(wips))
end
announce_all(KEYS[4], started, 'started')
-- A light lane's picks do not make the others yield: their batch-class work would come in small
-- batches for interactive jobs that never wait for them.
if interactive_taken > 0 and lane ~= 'light' then redis.call('HSET', state, 'interactive_at', now) end
if held_light then wake_lane(KEYS[8]) end
out[#out + 1] = {'picked', batch_taken, yielding and 1 or 0, capped and 1 or 0, interactive_taken}
return out

"""The Lua scripts Redis runs for the budget: one round trip each, atomic across every worker.

Keys of one caller (``P`` is ``key_prefix``; the caller id sits in a hash tag so that all of a
caller's keys live in one slot of a Redis Cluster too):

- ``P{caller}:w:<window ms>``: a hash ``runs`` / ``tokens`` / ``ms`` / ``t0`` for one window. It is
  created by the first check or commit of the window with a TTL of the window's length: when it
  expires, the window resets. Its TTL is therefore exactly the time until the reset; ``t0`` (when
  it started) tells one window from the next of the same length.
- ``P{caller}:slots``: a sorted set of the runs in flight, one member per run id, scored with the
  time its slot expires (Redis time, ms). A worker that died leaves a member that expires by score.
- ``P{caller}:holds``: a hash ``r:<run id>`` -> tokens held by that run in flight, and ``total``.
- ``P{caller}:stats``: a hash ``avg`` (recent tokens per run) and ``n`` (runs in that average).
- ``P{caller}:r:<run id>``: the run's record, the idempotency key of its check, commit and
  release: ``s`` state (``a`` admitted, ``c`` settled, ``v`` voided), ``n`` the nonce of the check
  that admitted it (or was voided), ``h`` hold, ``c`` counted in ``runs``, ``k`` counted by the
  current admission, ``w`` the ``t0`` of each window it was counted in, ``t`` tokens charged so far.

The scripts read the clock with ``TIME`` inside Redis, so workers whose clocks disagree still
agree on windows and slots; each returns Redis's ``now`` (ms) last, so a client can tell a
deadline in Redis time.
"""

from __future__ import annotations

__all__ = ["CHECK", "COMMIT", "USAGE", "VOID"]

# Shared by CHECK, COMMIT and VOID: the current time, and giving back a run's slot and hold.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots, holds, stats, rec = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function free(id)
  redis.call('ZREM', slots, id)
  local h = redis.call('HGET', holds, 'r:' .. id)
  if h then
    redis.call('HDEL', holds, 'r:' .. id)
    local v = tonumber(h)
    -- 0 - v, never -v: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
    if v ~= 0 then redis.call('HINCRBY', holds, 'total', 0 - v) end
  end
end
local function split(text)
  local out = {}
  for part in string.gmatch(text or '', '([^,]*),?') do out[#out + 1] = part end
  return out
end
local function uncount(wids, count)
  -- take the run out of `runs` of each window it was counted in, if that window still runs
  for i = 1, count do
    local key = KEYS[4 + i]
    local t0 = redis.call('HGET', key, 't0')
    if wids[i] ~= nil and wids[i] ~= '' and t0 == wids[i] then
      if (tonumber(redis.call('HGET', key, 'runs')) or 0) > 0 then
        redis.call('HINCRBY', key, 'runs', -1)
      end
    end
  end
end
"""

# KEYS: 1 slots, 2 holds, 3 stats, 4 run record, 5.. windows.
# ARGV: 1 run id, 2 nonce, 3 deadline (Redis ms; 0: none), 4 slot ttl ms, 5 record ttl ms,
# 6 max concurrent (-1: none), 7 hold (-1: the caller's average), 8 initial hold,
# then per window: window ms, max runs, max tokens, max ms (each -1: none).
# Returns {code, in flight, hold, refusals, now}: code 1 admitted, 2 already admitted (a retried
# check, or a recovered run: nothing counted again), 0 refused, -1 too late (the deadline passed:
# nothing applied), -2 this check was voided before Redis ran it (nothing applied).
# A refusal is {kind, window index, used, limit, wait ms, held, hold}; kind 1 runs, 2 tokens,
# 3 ms, 4 concurrent, 5 tokens: used + held by runs in flight + this run's hold would pass the
# limit; wait is the window key's PTTL (-2: no key yet; -3: none, a run in flight may free room)
# or, for concurrent, the ms until the oldest slot expires.
CHECK = (
    _PRELUDE
    + """
local run_id, nonce = ARGV[1], ARGV[2]
local deadline = tonumber(ARGV[3])
if deadline > 0 and now > deadline then return {-1, 0, 0, {}, now} end
local state = redis.call('HMGET', rec, 's', 'n', 'c', 'h')
local s, counted = state[1], state[3]
if s == 'v' and state[2] == nonce then return {-2, 0, 0, {}, now} end
local slot_ttl, rec_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local windows = #KEYS - 4
if s == 'a' then
  local score = redis.call('ZSCORE', slots, run_id)
  if score and tonumber(score) > now then
    redis.call('ZADD', slots, now + slot_ttl, run_id)
    if redis.call('PTTL', slots) < slot_ttl then redis.call('PEXPIRE', slots, slot_ttl) end
    if redis.call('PTTL', holds) < slot_ttl then redis.call('PEXPIRE', holds, slot_ttl) end
    redis.call('HSET', rec, 'n', nonce)
    redis.call('PEXPIRE', rec, rec_ttl)
    return {2, redis.call('ZCOUNT', slots, '(' .. now, '+inf'), tonumber(state[4]) or 0, {}, now}
  end
  free(run_id)  -- its slot expired: admit it afresh (without counting the run again)
end
local expired = redis.call('ZRANGEBYSCORE', slots, '-inf', now, 'LIMIT', 0, 64)
for _, id in ipairs(expired) do free(id) end
local in_flight = redis.call('ZCOUNT', slots, '(' .. now, '+inf')
local held = tonumber(redis.call('HGET', holds, 'total')) or 0
if held < 0 then held = 0 end
local count_run = counted ~= '1'
-- the run's hold: a number, or the caller's recent average; never more than the smallest token limit
local hold = 0
local smallest = -1
for i = 1, windows do
  local limit = tonumber(ARGV[8 + (i - 1) * 4 + 3])
  if limit >= 0 and (smallest < 0 or limit < smallest) then smallest = limit end
end
if smallest >= 0 then
  hold = tonumber(ARGV[7])
  if hold < 0 then
    local avg = redis.call('HGET', stats, 'avg')
    if avg then hold = math.ceil(tonumber(avg)) else hold = tonumber(ARGV[8]) end
  end
  if hold > smallest then hold = smallest end
end
local refusals = {}
local ttls = {}
for i = 1, windows do
  local key = KEYS[4 + i]
  local base = 8 + (i - 1) * 4
  local used = redis.call('HMGET', key, 'runs', 'tokens', 'ms')
  local ttl = redis.call('PTTL', key)
  ttls[i] = ttl
  local runs, tokens, ms = tonumber(used[1]) or 0, tonumber(used[2]) or 0, tonumber(used[3]) or 0
  local max_runs, max_tokens, max_ms = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  if count_run and max_runs >= 0 and runs >= max_runs then
    refusals[#refusals + 1] = {1, i, runs, max_runs, ttl, 0, 0}
  end
  if max_tokens >= 0 then
    if tokens >= max_tokens then
      refusals[#refusals + 1] = {2, i, tokens, max_tokens, ttl, held, hold}
    elseif tokens + held + hold > max_tokens then
      -- with runs in flight, one of them ending may make room before the window resets
      local wait = ttl
      if held > 0 then wait = -3 end
      refusals[#refusals + 1] = {5, i, tokens, max_tokens, wait, held, hold}
    end
  end
  if max_ms >= 0 and ms >= max_ms then
    refusals[#refusals + 1] = {3, i, ms, max_ms, ttl, 0, 0}
  end
end
local max_concurrent = tonumber(ARGV[6])
if max_concurrent >= 0 and in_flight >= max_concurrent then
  local oldest = redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local wait = -2
  if oldest[2] then wait = tonumber(oldest[2]) - now end
  refusals[#refusals + 1] = {4, 0, in_flight, max_concurrent, wait, 0, 0}
end
if #refusals > 0 then return {0, in_flight, hold, refusals, now} end
local wids = {}
for i = 1, windows do
  local key = KEYS[4 + i]
  if count_run then
    redis.call('HINCRBY', key, 'runs', 1)
    if ttls[i] == -2 then redis.call('HSET', key, 't0', now) end
    if ttls[i] < 0 then redis.call('PEXPIRE', key, ARGV[5 + i * 4]) end
    wids[i] = redis.call('HGET', key, 't0') or ''
  end
end
redis.call('ZADD', slots, now + slot_ttl, run_id)
if redis.call('PTTL', slots) < slot_ttl then redis.call('PEXPIRE', slots, slot_ttl) end
redis.call('HSET', holds, 'r:' .. run_id, hold)
redis.call('HINCRBY', holds, 'total', hold)
if redis.call('PTTL', holds) < slot_ttl then redis.call('PEXPIRE', holds, slot_ttl) end
if count_run then
  redis.call('HSET', rec, 's', 'a', 'n', nonce, 'h', hold, 'c', '1', 'k', '1', 'w', table.concat(wids, ','))
else
  redis.call('HSET', rec, 's', 'a', 'n', nonce, 'h', hold, 'k', '0')
end
redis.call('PEXPIRE', rec, rec_ttl)
return {1, in_flight + 1, hold, {}, now}
"""
)

# KEYS: as CHECK. ARGV: 1 run id, 2 tokens (the run's total so far), 3 ms (this part of the run),
# 4 release (1: the run never started, give back its count), 5 record ttl ms, 6 runs in the
# average, 7 stats ttl ms, then one window ms per window key.
# Returns {1, tokens charged now, now}, or {0, 0, now} when the run was already settled (a retried
# or replayed commit: nothing is charged twice). A settled run's commit with a higher total is a later
# part of the run (a worker that took it over, committing after the paused one it took it from): it
# is charged the difference, and its runtime.
COMMIT = (
    _PRELUDE
    + """
local run_id = ARGV[1]
local state = redis.call('HMGET', rec, 's', 't', 'k', 'w')
local s = state[1]
local charged = tonumber(state[2]) or 0
local total = tonumber(ARGV[2])
if s == 'v' or (s == 'c' and total <= charged) then return {0, 0, now} end
local windows = #KEYS - 4
local delta = total - charged
if delta < 0 then delta = 0 end
local ms = tonumber(ARGV[3])
local release = ARGV[4] == '1'
if delta > 0 or ms > 0 then
  for i = 1, windows do
    local key = KEYS[4 + i]
    local ttl = redis.call('PTTL', key)
    if delta > 0 then redis.call('HINCRBY', key, 'tokens', delta) end
    if ms > 0 then redis.call('HINCRBY', key, 'ms', ms) end
    if ttl == -2 then redis.call('HSET', key, 't0', now) end
    if ttl < 0 then redis.call('PEXPIRE', key, ARGV[7 + i]) end
  end
end
local fields = {'s', 'c', 't', math.max(charged, total), 'k', '0'}
if s == 'a' then
  free(run_id)
  if release and state[3] == '1' then
    uncount(split(state[4]), windows)
    fields[#fields + 1] = 'c'
    fields[#fields + 1] = '0'
  end
end
if delta > 0 and not release then
  local st = redis.call('HMGET', stats, 'avg', 'n')
  local n = math.min((tonumber(st[2]) or 0) + 1, tonumber(ARGV[6]))
  local avg = tonumber(st[1]) or 0
  avg = avg + (delta - avg) / n
  redis.call('HSET', stats, 'avg', tostring(avg), 'n', n)
  redis.call('PEXPIRE', stats, ARGV[7])
end
redis.call('HSET', rec, unpack(fields))
redis.call('PEXPIRE', rec, ARGV[5])
return {1, delta, now}
"""
)

# KEYS: as CHECK. ARGV: 1 run id, 2 nonce, 3 record ttl ms.
# Undo the check with this nonce (the client gave up on it): if Redis ran it, its slot, hold and
# count are given back; if Redis has not run it yet, a tombstone makes it a no-op when it does.
# Returns 1 undone, 2 tombstone left, 0 nothing to do (another check of the run, or it settled).
VOID = (
    _PRELUDE
    + """
local run_id, nonce = ARGV[1], ARGV[2]
local state = redis.call('HMGET', rec, 's', 'n', 'k', 'w')
local s = state[1]
if s == 'a' and state[2] == nonce then
  free(run_id)
  if state[3] == '1' then
    uncount(split(state[4]), #KEYS - 4)
    redis.call('HSET', rec, 'c', '0')
  end
  redis.call('HSET', rec, 's', 'v', 'k', '0')
  redis.call('PEXPIRE', rec, ARGV[3])
  return {1, now}
end
if not s then
  redis.call('HSET', rec, 's', 'v', 'n', nonce)
  redis.call('PEXPIRE', rec, ARGV[3])
  return {2, now}
end
return {0, now}
"""
)

# KEYS: 1 slots, 2 holds, 3 stats, 4.. windows. ARGV: 1 most runs in flight to list. Read only.
# Returns {in flight, ms until the oldest slot expires (-2: none), {runs, tokens, ms, pttl}...,
# held, average tokens per run ('' : none), {run id, ms until its slot expires, hold}...}.
USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local wait = -2
if live[2] then wait = tonumber(live[2]) - now end
local windows = {}
for i = 4, #KEYS do
  local used = redis.call('HMGET', KEYS[i], 'runs', 'tokens', 'ms')
  windows[#windows + 1] = {
    tonumber(used[1]) or 0, tonumber(used[2]) or 0, tonumber(used[3]) or 0, redis.call('PTTL', KEYS[i])
  }
end
local runs = {}
local held = 0
for i = 1, #live, 2 do
  local h = tonumber(redis.call('HGET', KEYS[2], 'r:' .. live[i])) or 0
  runs[#runs + 1] = {live[i], tonumber(live[i + 1]) - now, h}
end
if in_flight > 0 then held = tonumber(redis.call('HGET', KEYS[2], 'total')) or 0 end
local avg = redis.call('HGET', KEYS[3], 'avg') or ''
return {in_flight, wait, windows, held, avg, runs}
"""

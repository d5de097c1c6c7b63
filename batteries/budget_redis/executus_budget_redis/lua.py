"""The Lua scripts Redis runs for the budget: one round trip each, atomic across every worker.

Keys of one caller (``P`` is ``key_prefix``; the caller id sits in a hash tag so that all of a
caller's keys live in one slot of a Redis Cluster too):

- ``P{caller}:w:<window ms>``: a hash ``runs`` / ``tokens`` / ``ms`` for one window. It is created by
  the first check or commit of the window with a TTL of the window's length: when it expires, the
  window resets. Its TTL is therefore exactly the time until the reset.
- ``P{caller}:slots``: a sorted set of in-flight runs, one member per admitted run (a random
  token), scored with the time its slot expires (Redis time, ms). ``commit`` removes the member; a
  worker that died leaves a member that expires by score.

Both scripts read the clock with ``TIME`` inside Redis, so workers whose clocks disagree still
agree on windows and slots.
"""

from __future__ import annotations

__all__ = ["CHECK", "COMMIT", "USAGE"]

# KEYS[1] slots, KEYS[2..] windows.
# ARGV: token, slot ttl ms, max concurrent (-1: none), then per window: window ms, max runs,
# max tokens, max ms (each -1: none).
# Returns {1, in flight after admission} or {0, in flight, {kind, window index, used, limit, wait ms}...}
# with kind 1 runs, 2 tokens, 3 ms, 4 concurrent; wait ms is the window key's PTTL (-2: no key yet)
# or, for concurrent, the ms until the oldest slot expires.
CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = KEYS[1]
local slot_ttl = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local in_flight = redis.call('ZCARD', slots)
local refusals = {}
local ttls = {}
for i = 1, #KEYS - 1 do
  local key = KEYS[i + 1]
  local base = 4 + (i - 1) * 4
  local used = redis.call('HMGET', key, 'runs', 'tokens', 'ms')
  local ttl = redis.call('PTTL', key)
  ttls[i] = ttl
  for kind = 1, 3 do
    local limit = tonumber(ARGV[base + kind])
    local value = tonumber(used[kind]) or 0
    if limit >= 0 and value >= limit then
      refusals[#refusals + 1] = {kind, i, value, limit, ttl}
    end
  end
end
if max_concurrent >= 0 and in_flight >= max_concurrent then
  local oldest = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
  local wait = -2
  if oldest[2] then wait = tonumber(oldest[2]) - now end
  refusals[#refusals + 1] = {4, 0, in_flight, max_concurrent, wait}
end
if #refusals > 0 then
  return {0, in_flight, refusals}
end
for i = 1, #KEYS - 1 do
  local key = KEYS[i + 1]
  redis.call('HINCRBY', key, 'runs', 1)
  if ttls[i] < 0 then
    redis.call('PEXPIRE', key, ARGV[4 + (i - 1) * 4])
  end
end
redis.call('ZADD', slots, now + slot_ttl, ARGV[1])
if redis.call('PTTL', slots) < slot_ttl then
  redis.call('PEXPIRE', slots, slot_ttl)
end
return {1, in_flight + 1}
"""

# KEYS[1] slots, KEYS[2..] windows.
# ARGV: tokens, ms, then one window ms per window key, then the slot tokens to release.
# Returns how many slots it released.
COMMIT = """
local tokens = tonumber(ARGV[1])
local ms = tonumber(ARGV[2])
local windows = #KEYS - 1
if tokens > 0 or ms > 0 then
  for i = 1, windows do
    local key = KEYS[i + 1]
    if tokens > 0 then redis.call('HINCRBY', key, 'tokens', tokens) end
    if ms > 0 then redis.call('HINCRBY', key, 'ms', ms) end
    if redis.call('PTTL', key) == -1 then
      redis.call('PEXPIRE', key, ARGV[2 + i])
    end
  end
end
local released = 0
for j = 3 + windows, #ARGV do
  released = released + redis.call('ZREM', KEYS[1], ARGV[j])
end
return released
"""

# KEYS[1] slots, KEYS[2..] windows. Read only.
# Returns {in flight, ms until the oldest slot expires (-2: none), {runs, tokens, ms, pttl}...}.
USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -2
if oldest[2] then wait = tonumber(oldest[2]) - now end
local windows = {}
for i = 2, #KEYS do
  local used = redis.call('HMGET', KEYS[i], 'runs', 'tokens', 'ms')
  windows[#windows + 1] = {
    tonumber(used[1]) or 0, tonumber(used[2]) or 0, tonumber(used[3]) or 0, redis.call('PTTL', KEYS[i])
  }
end
return {in_flight, wait, windows}
"""

"""The Lua steps the shared backend runs in Redis, each one atomic.

Time is Redis's own (``redis.call('TIME')``, in microseconds), so the hosts' clocks
never matter: a window or a lease deadline means the same on every instance.

A sliding window is two keys: a sorted set of entries ``<id>:<cost>`` scored by the
time they were spent, and a string holding their total. ``trim`` drops what left the
window and takes its cost off the total, so a check costs the entries expired since
the last one, not the whole window. Both keys expire with the window, so an idle
scope leaves nothing behind.

Numbers cross into Redis as ``redis.call`` arguments (written exactly); only small
numbers are joined into strings (Lua writes larger ones with 14 digits), which is why
the rests' deadlines are kept in milliseconds.
"""

from __future__ import annotations

WINDOW_FUNCTIONS = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function trim(log, sum, now, window)
  local cut = now - window
  local total = tonumber(redis.call('GET', sum) or '0')
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cut)
  if #old > 0 then
    for i = 1, #old do
      total = total - tonumber(string.match(old[i], ':(%d+)$'))
    end
    if total < 0 then total = 0 end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cut)
    redis.call('SET', sum, total, 'KEEPTTL')
  end
  return total
end

local function wait_for(log, now, window)
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if first[2] == nil then return window end
  local wait = tonumber(first[2]) + window - now
  if wait < 0 then return 0 end
  return wait
end

local function spend(log, sum, now, window, id, cost)
  redis.call('ZADD', log, now, id .. ':' .. cost)
  redis.call('INCRBY', sum, cost)
  local ms = math.ceil(window / 1000)
  redis.call('PEXPIRE', log, ms)
  redis.call('PEXPIRE', sum, ms)
end
"""

#: KEYS: log, sum. ARGV: limit, window (us), cost, entry id.
#: Returns -1 when admitted, else the microseconds until it could be.
ADMIT = WINDOW_FUNCTIONS + """
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if cost > limit then return window end
local now = clock()
local total = trim(KEYS[1], KEYS[2], now, window)
if total + cost > limit then return wait_for(KEYS[1], now, window) end
spend(KEYS[1], KEYS[2], now, window, ARGV[4], cost)
return -1
"""

#: A credential's lease: its concurrency (a sorted set of lease ids scored by expiry)
#: and its requests and tokens windows, checked and taken in one step.
#: KEYS: leases, requests log, requests sum, tokens log, tokens sum.
#: ARGV: lease id, ttl (us), max concurrency, requests limit (-1: none), tokens limit
#: (-1: none), input tokens, window (us).
#: Returns {code, wait us}: 0 busy, 1 requests window full, 2 tokens window full, 3 leased.
LEASE = WINDOW_FUNCTIONS + """
local id, ttl, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, tokens, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = clock()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= most then return {0, -1} end
if rpm >= 0 and trim(KEYS[2], KEYS[3], now, window) >= rpm then return {1, wait_for(KEYS[2], now, window)} end
if tpm >= 0 and trim(KEYS[4], KEYS[5], now, window) >= tpm then return {2, wait_for(KEYS[4], now, window)} end
redis.call('ZADD', KEYS[1], now + ttl, id)
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000))
if rpm >= 0 then spend(KEYS[2], KEYS[3], now, window, id, 1) end
if tpm >= 0 and tokens > 0 then spend(KEYS[4], KEYS[5], now, window, id, tokens) end
return {3, 0}
"""

#: KEYS: leases, tokens log, tokens sum. ARGV: lease id, output tokens, window (us),
#: tokens limited (1/0). The lease leaves the set; what the call produced joins the window.
RELEASE = WINDOW_FUNCTIONS + """
redis.call('ZREM', KEYS[1], ARGV[1])
local tokens, window = tonumber(ARGV[2]), tonumber(ARGV[3])
if tokens > 0 and ARGV[4] == '1' then
  local now = clock()
  trim(KEYS[2], KEYS[3], now, window)
  spend(KEYS[2], KEYS[3], now, window, ARGV[1] .. 'r', tokens)
end
return 1
"""

#: KEYS: each open lease's set. ARGV: ttl (us), then each lease's id, in KEYS' order.
#: Leases a crash left unrenewed expire; those renewed here live ``ttl`` more.
RENEW = WINDOW_FUNCTIONS + """
local now = clock()
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl / 1000))
end
return #KEYS
"""

#: A rest begins: kept in the rests hash with its deadline (ms, Redis time) unless a
#: later one is there, and published. The hash lives as long as its longest rest (it
#: never outlives every rest in it, however many keys rested once). KEYS: rests hash. ARGV: field, wait (ms),
#: payload, channel, origin. Published: ``origin|wait ms|payload``. Returns 1 if kept.
REST = WINDOW_FUNCTIONS + """
local now = math.floor(clock() / 1000)
local wait = tonumber(ARGV[2])
local deadline = now + wait
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local d = tonumber(string.match(old, '^(%d+)|'))
  if d and d >= deadline then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], deadline .. '|' .. ARGV[3])
if redis.call('PTTL', KEYS[1]) < wait then redis.call('PEXPIRE', KEYS[1], wait) end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '|' .. wait .. '|' .. ARGV[3])
return 1
"""

#: The rests still running: ``wait ms|payload`` each; the ended ones are removed.
#: KEYS: rests hash.
RESTS = WINDOW_FUNCTIONS + """
local now = math.floor(clock() / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local d, payload = string.match(all[i + 1], '^(%d+)|(.*)$')
  d = tonumber(d)
  if d == nil or d <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, (d - now) .. '|' .. payload)
  end
end
return out
"""

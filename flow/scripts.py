"""The flow gate's server-side Lua scripts, one named constant per script.

Every script reads the clock with Redis ``TIME`` (so the workers' clocks never
matter) and works in integer microseconds: a Unix time in microseconds (~1.7e15)
is exact in a Lua double, and numbers written back go through ``%.0f`` because
Lua's default ``tostring`` keeps only 14 significant digits.

Return values are flat arrays of integers and strings because that is what
survives the Lua → RESP conversion (Lua numbers become integers; floats are
truncated).
"""

from __future__ import annotations

# Shared first lines: the Redis clock in microseconds and a loss-free number formatter.
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
"""

# GCRA over N buckets at once (KEYS[i]; ARGV[2i-1]=interval_us, ARGV[2i]=tolerance_us): all or nothing.
# Returns {1, 0} and advances every bucket, or {0, retry_after_us} and changes nothing, so a
# job refused by one bucket never spends another bucket's capacity.
GCRA = _CLOCK + """
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if allow_at > now and allow_at - now > wait then wait = allow_at - now end
  tats[i] = tat + interval
end
if wait > 0 then return {0, wait} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, fmt(tats[i]), 'PX', fmt(math.ceil((tats[i] - now) / 1000) + 1000))
end
return {1, 0}
"""

# Lease-based semaphore (KEYS[1] zset of holder -> lease expiry; ARGV: member, limit, lease_us).
# Drops expired holders (dead workers), then adds the member if fewer than `limit` remain.
# Returns {1, 0} or {0, us until the earliest lease expires}.
ACQUIRE = _CLOCK + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], fmt(now + lease), ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease / 1000 + 1000 then
  redis.call('PEXPIRE', KEYS[1], fmt(math.ceil(lease / 1000) + 1000))
end
return {1, 0}
"""

# Extends leases (KEYS[i] zset, ARGV[1]=lease_us, ARGV[i+1]=member in KEYS[i]); only existing
# members (XX), so a lease already reclaimed is not resurrected. Returns how many were renewed.
RENEW = _CLOCK + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', fmt(now + lease), ARGV[i + 1])
  if redis.call('PTTL', key) < lease / 1000 + 1000 then
    redis.call('PEXPIRE', key, fmt(math.ceil(lease / 1000) + 1000))
  end
end
return renewed
"""

# Shared breaker prelude (KEYS[1] = state hash): `move` changes state and logs the transition
# into `out` as from, to, failures; an open breaker whose open period is over becomes half_open
# here, lazily, on the first call that looks at it (there is no timer to do it).
_BREAKER = _CLOCK + """
local out = {}
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function move(to, failures)
  redis.call('HSET', KEYS[1], 'state', to, 'since', fmt(now))
  table.insert(out, state)
  table.insert(out, to)
  table.insert(out, failures)
  state = to
end
if state == 'open' and now >= tonumber(redis.call('HGET', KEYS[1], 'until') or 0) then
  move('half_open', 0)
  redis.call('DEL', KEYS[2])
end
"""

# Breaker admission (KEYS: state hash, probe zset; ARGV: member, lease_us, max_probes, probe_retry_us).
# Returns {code, delay_us, now_us, transitions...}: code 1 closed (run), 2 half_open probe slot
# taken (run, holds a probe lease), 0 refused (open, or half_open with the probes all busy).
BREAKER_ADMIT = _BREAKER + """
if state == 'closed' then return {1, 0, now, unpack(out)} end
if state == 'open' then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'until')) - now, now, unpack(out)}
end
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], fmt(now + lease), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], fmt(math.ceil(lease / 1000) + 1000))
  return {2, 0, now, unpack(out)}
end
return {0, tonumber(ARGV[4]), now, unpack(out)}
"""

# Breaker outcome (KEYS: state hash, probe zset, failure zset, name set; ARGV: ok, member,
# window_us, threshold, open_us, name). Closed: a failure joins the sliding window and opens the
# breaker at the threshold. Half_open: success closes, failure re-opens. Open: outcomes of jobs
# started before it opened are ignored. The policy's window and threshold are kept in the state
# hash, so a reader that never imported the declaring module (the admin API) counts the same
# window. Returns {now_us, transitions...}.
BREAKER_RECORD = _BREAKER + """
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('HSET', KEYS[1], 'window_us', ARGV[3], 'threshold', ARGV[4])
local open_us = tonumber(ARGV[5])
if ARGV[1] == '1' then
  if state == 'half_open' then
    move('closed', 0)
    redis.call('DEL', KEYS[2], KEYS[3])
  end
  return {now, unpack(out)}
end
if state == 'closed' then
  local window = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[3], fmt(now), ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now - window))
  redis.call('PEXPIRE', KEYS[3], fmt(math.ceil(window / 1000) + 1000))
  local failures = redis.call('ZCARD', KEYS[3])
  if failures >= tonumber(ARGV[4]) then
    move('open', failures)
    redis.call('HSET', KEYS[1], 'until', fmt(now + open_us))
  end
elseif state == 'half_open' then
  move('open', 1)
  redis.call('HSET', KEYS[1], 'until', fmt(now + open_us))
  redis.call('DEL', KEYS[2])
end
return {now, unpack(out)}
"""

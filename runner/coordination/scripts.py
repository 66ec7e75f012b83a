"""The coordinator's Lua scripts: each one step that Redis runs whole, so that processes
asking at once never both see the same free slot, token or dollar.

Times are the callers' wall clocks (``ARGV``), not Redis's: every process of a run reads the
same clock (NTP keeps machines within milliseconds, and leases last tens of seconds), and a
test's virtual clock is then the coordinator's too. Numbers leave Lua as text of 17 digits
(seconds since 1970 need 16 to keep their milliseconds; ``tostring`` keeps 14). Every key
expires ``keep`` seconds after its last use, so a run leaves nothing behind for long.
"""

from __future__ import annotations

# A lease for one job: KEYS slots (lease → expiry), limit (the shared cap), wanting (holder →
# until when it waits). ARGV now, ttl, ceiling, lease, holder, wait_ttl, more (1: the holder
# has more jobs waiting), keep. Expired leases and waits are dropped first. A lease already
# held is renewed (a call retried after a lost answer is not counted twice). A slot is given
# when the shared cap has room and no other waiting holder holds fewer slots than this one:
# processes that start late get their part as slots free, and a freed slot goes to whoever
# has least.
ACQUIRE = """
local now = tonumber(ARGV[1])
local lease, holder = ARGV[4], ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local granted = 0
if redis.call('ZSCORE', KEYS[1], lease) then
  granted = 1
else
  local ceiling = tonumber(ARGV[3])
  local limit = tonumber(redis.call('HGET', KEYS[2], 'limit') or ceiling)
  limit = math.max(1, math.floor(math.min(limit, ceiling)))
  local members = redis.call('ZRANGE', KEYS[1], 0, -1)
  if #members < limit then
    local held = {}
    for _, member in ipairs(members) do
      local owner = string.match(member, '^(.*)#')
      held[owner] = (held[owner] or 0) + 1
    end
    local mine = held[holder] or 0
    granted = 1
    for _, other in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if other ~= holder and (held[other] or 0) < mine then
        granted = 0
      end
    end
  end
end
if granted == 1 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), lease)
  if ARGV[7] == '0' then
    redis.call('ZREM', KEYS[3], holder)
  end
else
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), holder)
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
return granted
"""

# Renew, add and drop leases: KEYS slots; ARGV expiry, keep, adds (how many of the leases that
# follow are to hold until expiry, whatever the cap), then the leases to hold, then those to
# drop. Returns how many leases the key has now.
SETTLE = """
local adds = tonumber(ARGV[3])
for i = 4, #ARGV do
  if i < 4 + adds then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""

# The shared cap's AIMD: KEYS limit; ARGV now, ceiling, cut (1: a "too many jobs" answer came),
# accepted (submits accepted since the last call), cooldown, keep. Each accepted submit adds
# 1/limit (about +1 per cap's worth of them); a cut takes a quarter off, at most once per
# cooldown over every process (one burst of refusals is one signal). Returns the cap.
LIMIT = """
local now, ceiling = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit = math.min(ceiling, tonumber(redis.call('HGET', KEYS[1], 'limit') or ceiling))
for _ = 1, tonumber(ARGV[4]) do
  limit = math.min(ceiling, limit + 1 / limit)
end
if ARGV[3] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'cut_at') or '-1e18')
  if now - last >= tonumber(ARGV[5]) then
    limit = math.max(1, limit * 0.75)
    redis.call('HSET', KEYS[1], 'cut_at', ARGV[1])
  end
end
local text = string.format('%.17g', limit)
redis.call('HSET', KEYS[1], 'limit', text)
redis.call('EXPIRE', KEYS[1], ARGV[6])
return text
"""

# One request of the key's rate: KEYS bucket; ARGV now, per_second, burst, keep. A token bucket
# refilled continuously (never backwards: a process whose clock is behind gets no refill).
# Returns "0" when the request may go, else the seconds to wait before asking again.
RATE = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or burst)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
local exact = '%.17g'
redis.call('HSET', KEYS[1], 'tokens', string.format(exact, tokens), 'at', string.format(exact, at))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return string.format('%.17g', wait)
"""

# Reserve a job's price: KEYS reserved (job → price), committed; ARGV job, price, limit, keep.
# A job already reserved stays reserved once (a job counts once in the run, whichever process
# or rerun asks); else its price is added only if the total stays within the limit. Returns
# {1 or 0, what is committed now}.
RESERVE = """
local committed = tonumber(redis.call('GET', KEYS[2]) or '0')
local ok = 1
if not redis.call('HGET', KEYS[1], ARGV[1]) then
  local price = tonumber(ARGV[2])
  if committed + price > tonumber(ARGV[3]) + 1e-9 then
    ok = 0
  else
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    committed = tonumber(redis.call('INCRBYFLOAT', KEYS[2], ARGV[2]))
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {ok, string.format('%.17g', committed)}
"""

# Release a job's reservation (it was not billed): KEYS reserved, committed; ARGV job.
RELEASE = """
local price = redis.call('HGET', KEYS[1], ARGV[1])
if price then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('INCRBYFLOAT', KEYS[2], '-' .. price)
end
return price and 1 or 0
"""

-- Asks a breaker whether a call may go through; moves OPEN -> HALF_OPEN once its timeout has passed
-- and grants at most one probe at a time (a lease that expires, so a crashed prober cannot wedge it).
-- Also honours the key's quota mark: a provider said its quota is spent (a per-day 429) until the mark
-- expires; read here so the normal path pays no extra round trip. A marked key is refused before any breaker
-- state is touched (no probe lease, no OPEN -> HALF_OPEN move).
-- KEYS[1]: breaker hash {st, cf, ou, ps, pl, window slots}; a missing key is a closed breaker
-- KEYS[2]: quota mark (a string whose PTTL is the time left until the quota resets); usually missing
-- ARGV[1]: probe lease ms, ARGV[2]: how long a caller refused during a probe should wait at most,
-- ARGV[3]: key ttl ms
-- Returns {allowed (0|1), probe (0|1), state ('closed' | 'open' | 'halfOpen' | 'exhausted'), retryAtMs (0 if allowed),
--          now ms (0 for a closed breaker: its caller reads the time only to tell a refused call how long to wait),
--          event ('' | 'halfOpen' | 'reject'),
--          consecutive failures (closed only; 0 lets a success skip recording: it would change nothing)}

-- Redis's clock, read only where an answer needs it: a closed breaker's answer, the common one, reads the quota mark
-- and the breaker alone (a TIME each was a quarter of the script's commands: every worker process's first job of a
-- throttled org's wake-up asks, its clean view having lapsed since the last one).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local qx = redis.call('PTTL', KEYS[2])
if qx > 0 then
  local now = clock()
  return {0, 0, 'exhausted', now + qx, now, 'reject'}
end
local s = redis.call('HMGET', KEYS[1], 'st', 'ou', 'pl', 'cf')
local st = s[1] or 'closed'
if st == 'closed' then
  return {1, 0, 'closed', 0, 0, '', tonumber(s[4]) or 0}
end
local now = clock()
local event = ''
local pl = tonumber(s[3]) or 0
if st == 'open' then
  local ou = tonumber(s[2]) or 0
  if now < ou then
    return {0, 0, 'open', ou, now, 'reject'}
  end
  event = 'halfOpen'
  pl = 0
  redis.call('HSET', KEYS[1], 'st', 'halfOpen', 'ps', 0)
end
if pl > now then
  -- The probe's outcome is unknown until it reports; ask again soon rather than at lease expiry.
  return {0, 0, 'halfOpen', math.min(pl, now + tonumber(ARGV[2])), now, 'reject'}
end
redis.call('HSET', KEYS[1], 'pl', now + tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, 1, 'halfOpen', 0, now, event}

-- Stores an entry unless the namespace was invalidated since the caller read it: a result computed
-- before a bump must never be served after it. Releases the caller's single-flight lock in the same call,
-- and appends the attempt's usage row to the usage stream when the caller passes one (with the run sink's
-- ride, includes/usage-ride.lua), so a computed miss costs one write round trip, not three. A flow child's row
-- is also summed on its hashes as usage-bill-3.lua sums the rows the processor appends (includes/usage-bill.lua).
-- KEYS[1]: org version counter, KEYS[2]: org+agent version counter, KEYS[3]: the agent's shared version counter,
-- KEYS[4]: entry, KEYS[5]: lock, KEYS[6]: usage stream (same hash tag as the rest; only written when ARGV[5] is set),
-- KEYS[7]: the job's BullMQ hash, KEYS[8]: its parent's (only read with a bill; any key of the tag without one)
-- ARGV[1]: tag the caller computed under ('' = whatever is current), ARGV[2]: json, ARGV[3]: ttl s,
-- ARGV[4]: lock token to release ('' = none), ARGV[5]: usage entry ('' = none, and nothing after ARGV[6] is read),
-- ARGV[6]: its field name, ARGV[7..15]: the row's bill (includes/usage-bill.lua), or ARGV[7] '' alone for none (a
-- bill's first argument, the job's creation time, is never ''), then the sink's ride (none: no ride), from ARGV[16]
-- after a bill, ARGV[8] after none
-- Returns {stored (0|1), the ride's reply (only with a ride)}: no tag, which no caller reads (each argument and
-- reply element costs Redis ~1k instructions: the 8 arguments of no bill were ~9 % of the call)
--- @include "usage-ride"
--- @include "usage-bill"
--- @include "result-cache-tag"
local ride = nil
if ARGV[5] ~= '' then
  -- A billed row appended already (its marker found: a call sent again) is not appended twice.
  local billed = ARGV[7] ~= ''
  if not billed or usageBill(KEYS[7], KEYS[8], ARGV, 7) then redis.call('XADD', KEYS[6], '*', ARGV[6], ARGV[5]) end
  local rideAt = billed and 16 or 8
  if #ARGV >= rideAt + 2 then ride = usageRide(KEYS[6], ARGV, rideAt) end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) == ARGV[4] then
  redis.call('DEL', KEYS[5])
end
local tag = resultCacheTag(KEYS, 1)
local stored = 1
if ARGV[1] ~= '' and ARGV[1] ~= tag then
  stored = 0
else
  -- The TTL as sent, not tonumber'd: redis.call formats a Lua number with `%.17g` (~2,400 Redis instructions).
  redis.call('SET', KEYS[4], tag .. '|' .. ARGV[2], 'EX', ARGV[3])
end
if ride then return {stored, ride} end
return {stored}

-- Appends a flow child's billed usage row that its result will not carry (a failed attempt the model answered, a
-- delayed run's paid calls) to the usage stream and adds its cost to the job's own hash, in one call: the parent
-- flow or pipeline run sums a child's cost from that field, which is so the sum of these rows in agent_runs.
-- Only the job incarnation that wrote the row is charged (the hash's BullMQ `timestamp`): a hash that is gone (the
-- job removed while it ran) is not re-created as a stray hash holding this field alone. The run sink's ride goes too.
-- KEYS[1]: usage stream   KEYS[2]: the job's BullMQ hash
-- ARGV[1]: field name, ARGV[2]: the row (JSON), ARGV[3]: the job's creation time, ARGV[4]: the billed field,
-- ARGV[5]: the row's cost (USD), ARGV[6..]: the ride (includes/usage-ride.lua; group '' and consumer '' for none)
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'timestamp') == ARGV[3] then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[4], ARGV[5])
end
return usageRide(KEYS[1], ARGV, 6)

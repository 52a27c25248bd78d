-- Appends a flow child's billed usage row that its result will not carry (a failed attempt the model answered, a
-- delayed run's paid calls) to the usage stream and adds its cost to the job's own hash and to its parent's (the
-- fan-out flow or pipeline run), in one call: the parent sums a child's cost from those fields, which are so the sum
-- of these rows in agent_runs. The parent's field is the one that lasts: retention removes a failed child's hash
-- (KEEP_FAILED_COUNT), often before its parent settles, while the parent's hash is what the flow's or run's view is
-- read from. The child's own field stays for parents settled by a worker of the version that wrote only it.
-- Only the job incarnation that wrote the row is charged (the hash's BullMQ `timestamp`): a hash that is gone (the
-- job removed while it ran) is not re-created as a stray hash holding this field alone, nor is a parent's that is
-- gone (removed: nothing reads it). The run sink's ride goes too.
-- KEYS[1]: usage stream   KEYS[2]: the job's BullMQ hash   KEYS[3]: its parent's BullMQ hash (`job.parentKey`)
-- ARGV[1]: field name, ARGV[2]: the row (JSON), ARGV[3]: the job's creation time, ARGV[4]: the billed field,
-- ARGV[5]: the row's cost (USD), ARGV[6]: the parent's field for this child (childBilledField),
-- ARGV[7..]: the ride (includes/usage-ride.lua; group '' and consumer '' for none)
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'timestamp') == ARGV[3] then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[4], ARGV[5])
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBYFLOAT', KEYS[3], ARGV[6], ARGV[5]) end
end
return usageRide(KEYS[1], ARGV, 7)

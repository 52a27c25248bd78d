-- Appends a flow child's usage row to the usage stream and sums it on the job's own hash and its parent's (the
-- fan-out flow or pipeline run), in one call, once per row (includes/usage-bill.lua): a call ioredis sent again
-- neither sums it nor appends it a second time. A row its result will not carry (a failed attempt the model
-- answered, a delayed run's paid calls) adds its cost to the job's `JOB_BILLED_FIELD` and the parent's
-- `childBilledField`; any row's embedding calls go to the parent's embedding fields for the child. The parent's
-- fields are the ones that last: retention removes a failed child's hash (KEEP_FAILED_COUNT), often before its
-- parent settles, while the parent's hash is what the flow's or run's view is read from. The child's own field
-- stays for parents settled by a worker of the version that wrote only it. The run sink's ride goes too.
-- KEYS[1]: usage stream   KEYS[2]: the job's BullMQ hash   KEYS[3]: its parent's BullMQ hash (`job.parentKey`)
-- ARGV[1]: field name, ARGV[2]: the row (JSON), ARGV[3..11]: the bill (includes/usage-bill.lua),
-- ARGV[12..]: the ride (includes/usage-ride.lua; group '' and consumer '' for none)
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
--- @include "usage-bill"
-- A call ioredis sent again (the row's marker found) appends no second entry.
if usageBill(KEYS[2], KEYS[3], ARGV, 3) then redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2]) end
return usageRide(KEYS[1], ARGV, 12)

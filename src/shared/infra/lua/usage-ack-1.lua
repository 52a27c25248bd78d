-- Acknowledges usage stream entries whose rows are committed in agent_runs, and deletes them: the stream
-- only ever holds rows not yet written, so its length is the sink's backlog. Then, when asked, reads the
-- consumer's next entries in the same call: the sink's own call, when no worker call carried it (not after a batch
-- that ended the sink's blocking read: the blocking read that follows reads, run-sink.ts `quiet`).
-- KEYS[1]: usage stream
-- ARGV[1..]: the ride (includes/usage-ride.lua): group, consumer ('' = do not read), most entries to read,
--   entry ids to acknowledge
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
return usageRide(KEYS[1], ARGV, 1)

-- Acknowledges usage stream entries whose rows are committed in agent_runs, and deletes them: the stream
-- only ever holds rows not yet written, so its length is the sink's backlog: the sink's own call, when no worker
-- call carried it. It asks for no read (consumer ''): its XREADGROUP after the call reads the rows for less than
-- a read in here, whose reply Redis turns into Lua tables and back (run-sink.ts `next`).
-- KEYS[1]: usage stream
-- ARGV[1..]: the ride (includes/usage-ride.lua): group, consumer ('' = do not read), most entries to read,
--   entry ids to acknowledge
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
return usageRide(KEYS[1], ARGV, 1)

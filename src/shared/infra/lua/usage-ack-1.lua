-- Acknowledges usage stream entries whose rows are committed in agent_runs, and deletes them: the stream
-- only ever holds rows not yet written, so its length is the sink's backlog. One call instead of a MULTI.
-- KEYS[1]: usage stream
-- ARGV[1]: consumer group, ARGV[2..]: entry ids
-- Returns the number of entries acknowledged
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return acked

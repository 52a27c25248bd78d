-- A result-cache namespace's tag, "<orgVersion>.<agentVersion>.<sharedVersion>" (a missing counter reads 0): what
-- an entry is stored under and what a read compares it with, so the lookup and the store must build it alike.
-- The three counters are KEYS[from], KEYS[from + 1], KEYS[from + 2]: the org's, the org+agent's, and the agent's in
-- every org (bumped by an ingest of shared knowledge the agent reads). Included by includes/result-cache-lookup.lua
-- and result-cache-set-8.lua.
local function resultCacheTag(keys, from)
  local v = redis.call('MGET', keys[from], keys[from + 1], keys[from + 2])
  return (v[1] or '0') .. '.' .. (v[2] or '0') .. '.' .. (v[3] or '0')
end

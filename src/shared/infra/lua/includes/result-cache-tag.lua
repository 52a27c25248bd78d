-- A result-cache namespace's tag, "<orgVersion>.<agentVersion>" (a missing counter reads 0): what an entry is
-- stored under and what a read compares it with, so the lookup and the store must build it alike. Included by
-- includes/result-cache-lookup.lua and result-cache-set-5.lua.
local function resultCacheTag(kOrgVersion, kAgentVersion)
  local v = redis.call('MGET', kOrgVersion, kAgentVersion)
  return (v[1] or '0') .. '.' .. (v[2] or '0')
end

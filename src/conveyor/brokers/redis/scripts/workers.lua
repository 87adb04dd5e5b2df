-- workers.lua: the live workers (heartbeat younger than its ttl).
--
-- KEYS[1]: {prefix}:workers       ZSET  worker id -> expiry (server Unix seconds)
-- KEYS[2]: {prefix}:workers:info  HASH  worker id -> WorkerInfo as JSON
-- ARGV:    none
--
-- Read-only. Returns the JSON of each live worker; register_worker.lua prunes the expired ones.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.6f', now), '+inf')) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then out[#out + 1] = info end
end
return out

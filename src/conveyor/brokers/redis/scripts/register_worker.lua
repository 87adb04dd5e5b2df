-- register_worker.lua: record a worker heartbeat and forget workers whose heartbeat expired.
--
-- KEYS[1]: {prefix}:workers       ZSET  worker id -> expiry (server Unix seconds)
-- KEYS[2]: {prefix}:workers:info  HASH  worker id -> WorkerInfo as JSON
-- ARGV:    worker id, info JSON, ttl (seconds)
--
-- Returns the number of expired workers forgotten.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return #expired

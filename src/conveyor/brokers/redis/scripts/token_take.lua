-- token_take.lua: reserve the next token of a token bucket (result backend, global rate limits).
--
-- KEYS[1]: {prefix:bucket:NAME}  HASH  tokens, at (server Unix ms of the last refill); PX ttl
-- ARGV[1]: refill rate in tokens per second
-- ARGV[2]: burst: the most tokens the bucket holds
--
-- An empty bucket lends from the future (tokens go below zero): the caller is told when its token is
-- due. The server's clock refills the bucket, so workers on machines with skewed clocks share one rate.
-- The key expires once the bucket would be full again: a missing key reads as a full bucket.
-- Returns the milliseconds until the reserved token is due, 0 when it was there (as a string).

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if state[1] then
  tokens = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate / 1000)
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
if tokens >= 0 then
  return '0'
end
return tostring(-tokens * 1000 / rate)

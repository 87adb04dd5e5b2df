-- token_take.lua: take one token from a token bucket (result backend, global rate limits).
--
-- KEYS[1]: {prefix:bucket:NAME}  HASH  tokens, at (server Unix ms of the last refill); PX ttl
-- ARGV[1]: refill rate in tokens per second
-- ARGV[2]: burst: the most tokens the bucket holds
--
-- The server's clock refills the bucket, so workers on machines with skewed clocks share one rate.
-- The key expires once the bucket would be full again: a missing key reads as a full bucket.
-- Returns 0 when a token was taken, else the milliseconds until one will be there (as a string).

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = burst
if state[1] then
  tokens = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate / 1000)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) * 1000 / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
return tostring(wait)

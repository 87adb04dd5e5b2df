-- alive.lua: which of these messages of one queue are pending or running (stored and not dead).
-- Used to check the holder of an idempotency key claim before answering its id.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, ids...
--
-- Reads T:m:ID (exists, and no dead_at field).
-- Returns one 1 or 0 per id.

local out = {}
for i = 2, #ARGV do
  local m = MSG .. ARGV[i]
  local alive = redis.call('EXISTS', m) == 1 and redis.call('HEXISTS', m, 'dead_at') == 0
  out[#out + 1] = alive and 1 or 0
end
return out

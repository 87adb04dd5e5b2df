-- dead_list.lua: the oldest dead letters of one queue.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, limit
--
-- Reads T:dead (oldest first) and T:m:ID.
-- Returns flat {id, body, reason, dead_at, deliveries, seq, ...}.

local out = {}
for _, id in ipairs(redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[2]) - 1)) do
  local f = redis.call('HMGET', MSG .. id, 'body', 'reason', 'dead_at', 'deliveries', 'seq')
  out[#out + 1] = id
  for j = 1, 5 do out[#out + 1] = f[j] end
end
return out

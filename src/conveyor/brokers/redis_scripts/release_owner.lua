-- release_owner.lua: return every message of one queue leased to OWNER (its process died) at once.
-- The deliveries still count: a message delivered max_deliveries times is dead-lettered instead.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, owner, max_deliveries
--
-- Touches: T:inflight (scanned: in-flight sets are small, bounded by workers' slots), T:m:ID,
-- T:ready or T:dead, T:signal.
-- Returns {count, released}: how many messages moved, and flat {key, id, ...} freed by dead-lettering.

local owner, max_deliveries = ARGV[2], tonumber(ARGV[3])
local now = server_now()
local mine, released = {}, {}
for _, id in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
  if redis.call('HGET', MSG .. id, 'owner') == owner then mine[#mine + 1] = id end
end
if #mine == 0 then return {0, released} end
chunked('ZREM', INFLIGHT, mine)
for _, id in ipairs(mine) do
  redeliver(id, 'its worker process ' .. owner .. ' died', now, max_deliveries, released)
end
signal(#mine)
return {#mine, released}

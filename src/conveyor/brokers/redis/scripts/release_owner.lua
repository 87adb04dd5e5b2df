-- release_owner.lua: return every message of one queue leased to OWNER (its process died) at once.
-- A message it was running keeps its delivery counted: delivered max_deliveries times, it is
-- dead-lettered instead. When the running ids are known, every other message (a prefetched
-- batch-mate that never started) goes back to its place without counting, like a nack.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, owner, max_deliveries, known ('1': the ids that follow were running; '0': unknown,
--             every message counts), then the running ids
--
-- Touches: T:inflight (scanned: in-flight sets are small, bounded by workers' slots), T:m:ID,
-- T:ready or T:dead, T:signal.
-- Returns {count, released}: how many messages moved, and flat {key, id, ...} freed by dead-lettering.

local owner, max_deliveries, known = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local running = {}
for i = 5, #ARGV do running[ARGV[i]] = true end
local now = server_now()
local mine, released = {}, {}
for _, id in ipairs(redis.call('ZRANGE', INFLIGHT, 0, -1)) do
  if redis.call('HGET', MSG .. id, 'owner') == owner then mine[#mine + 1] = id end
end
if #mine == 0 then return {0, released} end
chunked('ZREM', INFLIGHT, mine)
for _, id in ipairs(mine) do
  if known and not running[id] then
    local m = MSG .. id
    redis.call('HINCRBY', m, 'deliveries', -1)
    redis.call('HDEL', m, 'token', 'owner')
    make_ready(id)
  else
    redeliver(id, 'its worker process ' .. owner .. ' died', now, max_deliveries, released)
  end
end
signal(#mine)
return {#mine, released}

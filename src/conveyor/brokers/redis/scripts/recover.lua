-- recover.lua: promote due scheduled messages and recover expired leases of one queue now.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- KEYS[7]:    T:seen (catch_up in _common.lua: a stall's length is given back to running leases first)
-- ARGV:       T:m:, max_deliveries, max_requeues (REQUEUES_PER_DELIVERY x max_deliveries; see expire in
--             _common.lua: an expired lease counts a delivery only if a heartbeat marked it started)
--
-- Touches: T:seen, T:inflight (deadlines moved after a stall), T:scheduled -> T:ready, T:inflight -> T:ready
-- or T:dead, T:m:ID (deliveries, requeues), T:signal.
-- Returns {moved, released}: how many messages moved (at most 1000 of each kind per call), and flat
-- {key, id, ...} of idempotency keys freed by dead-lettering.

local now = server_now()
local released = {}
catch_up(KEYS[7], now)
local moved = promote_due(now) + recover_expired(now, tonumber(ARGV[2]), tonumber(ARGV[3]), released)
signal(moved)
return {moved, released}

-- _common.lua: helpers shared by every per-queue script. The loader prepends this file to each
-- script (it is never run alone), so the helpers are locals of the script that uses them.
--
-- Per-queue scripts all take the same KEYS, every one under the queue's hash tag T = {prefix:q:NAME}:
--   KEYS[1] T:ready      ZSET  id -> seq - priority * 2^48 (lowest first: priority DESC, then FIFO)
--   KEYS[2] T:scheduled  ZSET  id -> eta (Unix seconds)
--   KEYS[3] T:inflight   ZSET  id -> lease deadline (server Unix seconds)
--   KEYS[4] T:dead       ZSET  id -> dead_at (server Unix seconds)
--   KEYS[5] T:seq        STRING counter: enqueue sequence numbers and lease tokens
--   KEYS[6] T:signal     LIST  wake-up tokens for blocked reserves (BLPOP)
--   ARGV[1] T:m:         prefix of the per-message hashes T:m:ID (same hash tag, so same slot):
--                        body, priority, seq, score, deliveries, key?, token?, owner?, reason?, dead_at?,
--                        started? ('1': a heartbeat saw it running in this delivery; extend sets it,
--                        reserve clears it), requeues? (expired leases returned uncounted, never started)
-- The scripts that judge or extend leases (reserve, recover, extend) also take
--   KEYS[7] T:seen       STRING server time of the last of those calls (see catch_up below)
-- The global scripts (claim, release_keys, register_worker, workers) are loaded without this file.

local READY, SCHEDULED, INFLIGHT, DEAD, SEQ, SIGNAL = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local MSG = ARGV[1]
-- A signal list is trimmed to this many wake-up tokens (enough to wake that many idle reservers)
-- once it holds twice as many: trimming in bursts keeps the full list of an idle queue from
-- costing an LTRIM on every push (issue 6).
local SIGNAL_CAP = 64
-- Promotions and lease recoveries done per call, so one call never blocks the server for long.
-- A string: a Lua number given to redis.call is formatted with snprintf('%.17g') on every call,
-- which costs more than the command it bounds (so are the other numeric arguments below).
local RECOVER_BATCH = '1000'
-- Arguments per variadic command: stays under Lua's unpack() limit (LUAI_MAXCSTACK, 8000).
local CHUNK = 4000

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

-- An integer as redis.call's argument (string.format's integer path, not redis.call's '%.17g').
local function int(x)
  return string.format('%d', x)
end

-- Run CMD KEY ARGS... in chunks; ARGS is a flat list (pairs stay whole since CHUNK is even). KEY nil:
-- CMD ARGS... (a command whose arguments are all keys: DEL).
local function chunked(cmd, key, args)
  for i = 1, #args, CHUNK do
    local last = math.min(i + CHUNK - 1, #args)
    if key then
      redis.call(cmd, key, unpack(args, i, last))
    else
      redis.call(cmd, unpack(args, i, last))
    end
  end
end

-- A member longer than zset-max-listpack-value (64 bytes by default): see in_skiplist.
local SKIPLIST_SEED = string.rep('~', 129)

-- ZADD flat score/member pairs ARGS to KEY, creating KEY in skiplist encoding if it does not exist; a
-- sorted set keeps that encoding until it is emptied (Redis makes a small one a listpack again only when
-- it loads an RDB). The in-flight set holds the children's prefetched batches, a few dozen to a hundred
-- leases: as a listpack (a sorted set under 128 members) each ZADD of a new lease, whose deadline is the
-- latest, walks the whole list, parsing every member's score with strtod, and formats its own with
-- snprintf('%.17g'): a fifth of the server's work per message in a drain by two children. In a skiplist
-- a ZADD costs O(log n) and no text. The seed member (score 0) lives only inside the calling script: it
-- goes with the members of score 0, and ARGS hold none (lease deadlines); a message whose id is the seed's
-- own got its deadline from ARGS and stays.
local function zadd_skiplist(key, args)
  if redis.call('EXISTS', key) == 1 then
    chunked('ZADD', key, args)
    return
  end
  redis.call('ZADD', key, '0', SKIPLIST_SEED)
  chunked('ZADD', key, args)
  redis.call('ZREMRANGEBYSCORE', key, '0', '0')
end

-- Push up to COUNT wake-up tokens, keeping the list short when nobody is waiting.
local function signal(count)
  if count <= 0 then return end
  if count > SIGNAL_CAP then count = SIGNAL_CAP end
  local tokens = {}
  for i = 1, count do tokens[i] = '1' end
  if redis.call('LPUSH', SIGNAL, unpack(tokens)) > 2 * SIGNAL_CAP then
    redis.call('LTRIM', SIGNAL, '0', int(SIGNAL_CAP - 1))
  end
end

-- Put a stored message in the ready set at its original place (priority, then enqueue order).
local function make_ready(id)
  redis.call('ZADD', READY, redis.call('HGET', MSG .. id, 'score'), id)
end

-- Move a message (already out of ready/scheduled/inflight) to the dead letters; note its key for release.
local function bury(id, reason, now, released)
  local m = MSG .. id
  redis.call('HSET', m, 'reason', reason, 'dead_at', fmt(now))
  redis.call('HDEL', m, 'token', 'owner')
  redis.call('ZADD', DEAD, now, id)
  local key = redis.call('HGET', m, 'key')
  if key then
    released[#released + 1] = key
    released[#released + 1] = id
  end
end

-- A lease ended without an ack (expiry or dead owner): ready again, or dead once delivered max times.
local function redeliver(id, why, now, max_deliveries, released)
  local m = MSG .. id
  local deliveries = tonumber(redis.call('HGET', m, 'deliveries'))
  if deliveries >= max_deliveries then
    bury(id, 'delivered ' .. deliveries .. ' times without an acknowledgement (' .. why .. '); poison?', now, released)
  else
    redis.call('HDEL', m, 'token', 'owner')
    make_ready(id)
  end
end

-- Promote due scheduled messages to ready; returns how many moved. NOW_S: fmt(now), if the caller has it.
local function promote_due(now, now_s)
  local due = redis.call('ZRANGEBYSCORE', SCHEDULED, '-inf', now_s or fmt(now), 'LIMIT', '0', RECOVER_BATCH)
  if #due == 0 then return 0 end
  for _, id in ipairs(due) do make_ready(id) end
  chunked('ZREM', SCHEDULED, due)
  return #due
end

-- A lease expired. Nobody may be left to say whether the message ran (a whole worker was killed), so
-- the delivery counts only if a heartbeat marked it started; an unstarted one (a prefetched batch-mate)
-- goes back to its place uncounted (deliveries - 1 undoes reserve's count) and counts an uncounted
-- requeue instead, MAX_REQUEUES of which bury it (a task that kills its worker before any heartbeat).
local function expire(id, now, max_deliveries, max_requeues, released)
  local m = MSG .. id
  if redis.call('HGET', m, 'started') == '1' then
    redeliver(id, 'its lease expired without a heartbeat', now, max_deliveries, released)
    return
  end
  redis.call('HINCRBY', m, 'deliveries', -1)
  local requeues = redis.call('HINCRBY', m, 'requeues', 1)
  if requeues >= max_requeues then
    bury(id, 'its lease expired ' .. requeues .. ' times before it was seen running; poison?', now, released)
  else
    redis.call('HDEL', m, 'token', 'owner')
    make_ready(id)
  end
end

-- Recover expired leases; returns how many moved (redelivered or dead-lettered). NOW_S: fmt(now), if known.
local function recover_expired(now, max_deliveries, max_requeues, released, now_s)
  local expired = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now_s or fmt(now), 'LIMIT', '0', RECOVER_BATCH)
  if #expired == 0 then return 0 end
  chunked('ZREM', INFLIGHT, expired)
  for _, id in ipairs(expired) do
    expire(id, now, max_deliveries, max_requeues, released)
  end
  return #expired
end

-- Seconds until the next scheduled message is due or the next lease expires ('-1': neither).
local function next_due(now)
  local soonest = nil
  local s = redis.call('ZRANGE', SCHEDULED, '0', '0', 'WITHSCORES')
  if s[2] then soonest = tonumber(s[2]) end
  local f = redis.call('ZRANGE', INFLIGHT, '0', '0', 'WITHSCORES')
  if f[2] and (soonest == nil or tonumber(f[2]) < soonest) then soonest = tonumber(f[2]) end
  if soonest == nil then return '-1' end
  return fmt(math.max(soonest - now, 0))
end

-- True if ID is in flight under the lease TOKEN; false for a stale or unknown delivery.
local function held(id, token)
  return redis.call('HGET', MSG .. id, 'token') == token
end

-- Broker stalls (issue 11; conveyor/brokers/_stalls.py says why and the safety margin).
-- A silence of the queue longer than STALL_GAP seconds (server SIGSTOPped, paused or restarted with
-- persistence, clock stepped forward) is a stall: nobody could heartbeat, so every lease still
-- running at the last call gets the silence added to its deadline. Keep the values equal to _stalls.py.
local STALL_GAP = 1.5
local STAMP_EVERY = 0.25

-- Call before any lease deadline is judged or set; SEEN_KEY is the queue's T:seen.
local function catch_up(seen_key, now)
  local seen = tonumber(redis.call('GET', seen_key))
  local gap = seen and now - seen or 0
  if gap > STALL_GAP then
    local running = redis.call('ZRANGEBYSCORE', INFLIGHT, '(' .. fmt(seen), '+inf', 'WITHSCORES')
    local leases = {}
    for i = 1, #running, 2 do
      leases[#leases + 1] = tonumber(running[i + 1]) + gap
      leases[#leases + 1] = running[i]
    end
    chunked('ZADD', INFLIGHT, leases)
  end
  if not seen or gap > STAMP_EVERY or gap < 0 then
    redis.call('SET', seen_key, fmt(now))
  end
end

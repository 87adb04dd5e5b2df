-- conveyor's SQLite layout: the embedded default broker and result backend share one file.
-- Applied on every first connection of a process (every statement is IF NOT EXISTS).

-- One row per message, whatever its state:
--   0 ready      waiting in its queue
--   1 scheduled  waiting for its eta (countdown, retry delay)
--   2 in flight  leased to `owner` until `lease_until` under `token`
--   3 dead       in the dead-letter queue, with `reason`
-- `seq` orders messages first in, first out; `deliveries` counts hand-outs since the last
-- enqueue, requeue or retry. `started` (0/1) is set by a heartbeat (extend with running=) that saw
-- the message running in this delivery, and cleared by reserve: an expired lease counts its delivery
-- only when it is 1; otherwise the message goes back uncounted and `requeues` counts one more
-- uncounted return (REQUEUES_PER_DELIVERY x max_deliveries of them bury it). Both columns were added
-- after the first release: connection.py adds them to an older file. Times are Unix seconds.
CREATE TABLE IF NOT EXISTS messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    state       INTEGER NOT NULL,
    eta         REAL,
    body        BLOB    NOT NULL,
    key         TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    token       TEXT,
    lease_until REAL,
    reason      TEXT,
    dead_at     REAL,
    started     INTEGER NOT NULL DEFAULT 0,
    requeues    INTEGER NOT NULL DEFAULT 0
);

-- reserve: the next ready messages of a queue, highest priority first, then oldest.
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, seq) WHERE state = 0;
-- reserve/recover: scheduled messages that came due.
CREATE INDEX IF NOT EXISTS messages_due ON messages (eta) WHERE state = 1;
-- reserve/recover: leases that expired without a heartbeat.
CREATE INDEX IF NOT EXISTS messages_leases ON messages (lease_until) WHERE state = 2;
-- release_owner: everything a dead worker process held.
CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner) WHERE state = 2;
-- dead_letters: oldest first.
CREATE INDEX IF NOT EXISTS messages_dead ON messages (dead_at, seq) WHERE state = 3;
-- enqueue with key=: at most one pending or running message per idempotency key
-- (the key is cleared when a message is acked, dead-lettered or purged).
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (key) WHERE key IS NOT NULL;

-- stats: every queue that was ever used, so an empty queue is still listed.
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;

-- clock: one row, `seen`: the time of the last reserve, recover or extend (this machine's Unix
-- seconds, written at most every 0.25 s). A write that finds it older than STALL_GAP (1.5 s,
-- brokers/_stalls.py) takes the silence for a stall of the database (its write lock held, the
-- machine suspended, the clock stepped) and adds it to every lease still running at `seen`, so no
-- lease of a live worker expires because nobody could heartbeat.
CREATE TABLE IF NOT EXISTS clock (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seen REAL NOT NULL
);

-- workers: live worker heartbeats (info is JSON); rows past expires_at are not live.
CREATE TABLE IF NOT EXISTS workers (
    id         TEXT PRIMARY KEY,
    info       TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- results: one encoded ResultRecord per task id; rows past expires_at are gone.
CREATE TABLE IF NOT EXISTS results (
    id         TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    record     BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
-- the occasional sweep of expired results.
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);

-- Coordination primitives of the result backend (backends/base.py); times are Unix seconds.
-- leases: acquire_lease/release_lease, e.g. the beat leader; a row past expires_at is free to take.
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- claims: claim/unclaim, e.g. one beat slot; a row past expires_at counts as absent.
CREATE TABLE IF NOT EXISTS claims (
    key        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
-- the occasional sweep of expired claims.
CREATE INDEX IF NOT EXISTS claims_expiry ON claims (expires_at);

-- kv: get_value/set_value, e.g. beat's last fired slot per entry; expires_at NULL never expires.
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;

-- gathers: gather/gathered, a chord's member results by slot; the whole gather expires together.
CREATE TABLE IF NOT EXISTS gathers (
    key        TEXT    NOT NULL,
    idx        INTEGER NOT NULL,
    value      BLOB    NOT NULL,
    expires_at REAL    NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gathers_expiry ON gathers (expires_at);

-- buckets: take_token, the token buckets of global rate limits; a full bucket's row may be swept.
CREATE TABLE IF NOT EXISTS buckets (
    name       TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- events: the event log (conveyor/eventlog.py), one row per published batch; trimmed to the newest
-- MAX_BATCHES rows and to the app's events_ttl on each append.
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    at    REAL NOT NULL,
    batch BLOB NOT NULL
);

-- counters: Prometheus counters the engine keeps (Store.add_counts: conveyor/metrics.py), one row per
-- (set, name); they only grow, and never expire (a few rows per task name).
CREATE TABLE IF NOT EXISTS counters (
    key   TEXT NOT NULL,
    name  TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (key, name)
) WITHOUT ROWID;

-- conveyor's PostgreSQL layout, version 3: the event log (conveyor/eventlog.py: `conveyor events`, the
-- dashboard, `inspect`), one row per batch a worker published, in the order they were appended.
-- Applied like 0001 (one transaction, search_path = the schema); nothing here names a schema.
-- Each append trims the log to the newest MAX_BATCHES rows (backends/base.py) and to the app's
-- events_ttl, so the table stays small and autovacuum keeps up with its deletes.
CREATE TABLE events (seq bigserial PRIMARY KEY, at float8 NOT NULL, batch bytea NOT NULL);
CREATE INDEX events_at ON events (at);

-- conveyor's PostgreSQL layout, version 4: counters the engine keeps for Prometheus (conveyor/metrics.py:
-- what `conveyor dashboard` serves at /metrics), one row per (set, name), added to by every worker.
-- Applied like 0001 (one transaction, search_path = the schema); nothing here names a schema.
-- They only grow and never expire: a few rows per task name.
CREATE TABLE counters (key text NOT NULL, name text NOT NULL, value float8 NOT NULL, PRIMARY KEY (key, name));

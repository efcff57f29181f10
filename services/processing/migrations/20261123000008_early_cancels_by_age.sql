-- Offline cancels that arrived before their purchase are kept while the purchase may still come
-- (EARLY_CANCEL_RETENTION in services/processing/api.py, beyond any program's offline limit),
-- then the background work deletes them, oldest first, through this index. Built concurrently
-- (one index per file: see 20261123000006).

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS early_cancels_by_age ON early_cancels (create_time);

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS early_cancels_by_age;

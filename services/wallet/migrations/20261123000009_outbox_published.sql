-- The relay deletes rows published more than shared/outbox.py's PUBLISHED_RETENTION ago, oldest
-- first, a bounded batch at a time: this index finds them without reading the rows kept (which,
-- with a few days of purchases, are millions). Built concurrently, so that events keep being
-- written meanwhile (CREATE INDEX CONCURRENTLY cannot run inside dbmate's transaction: one index
-- per file).

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS outbox_published;

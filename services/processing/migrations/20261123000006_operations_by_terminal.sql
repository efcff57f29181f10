-- ListOperations by terminal (store.list_operations) pages in (create_time, operation_id) order,
-- after a cursor of the same pair. The indexes led by terminal_id continue with idempotency_key
-- or receipt_id, so every page fetched and sorted all of the terminal's operations, and walking a
-- busy terminal's pages cost O(n²). With this index a page reads the terminal's operations in
-- order from where the cursor points. Built concurrently, so that purchases keep being
-- recorded (dbmate sends a file's statements as one query, which PostgreSQL runs as one
-- transaction block, where CREATE INDEX CONCURRENTLY is refused: one index per file).

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS operations_by_terminal ON operations (terminal_id, create_time, operation_id);

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS operations_by_terminal;

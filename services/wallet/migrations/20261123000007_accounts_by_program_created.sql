-- ListAccounts by program (store.find_account_ids) pages in (create_time, account_id::text)
-- order, after a cursor of the same pair, and no index led with program_id (the ones on it cover
-- system accounts and external refs only): every page was a sequential scan of every account
-- plus a sort of the program's accounts, so walking a program's pages cost O(n²). This index
-- holds that exact key (account_id::text, not account_id: the planner matches the expression the
-- query sorts by), so a page reads its rows in order from where the cursor points. Built
-- concurrently, so that a running ledger keeps writing; one index per file, because dbmate sends
-- a file's statements as one query, which PostgreSQL runs as one transaction block, where CREATE
-- INDEX CONCURRENTLY is refused.

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_program_created
    ON accounts (program_id, create_time, (account_id::text));

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS accounts_by_program_created;

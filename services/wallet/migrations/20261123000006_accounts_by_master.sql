-- A master account's sub-accounts are read by master_account_id (OpenMemberAccounts answers with
-- them, GetMasterAccount reads them), and the only index on that column covered primary accounts
-- (accounts_one_primary_per_kind): each read was a sequential scan of every account, so opening
-- a member's accounts slowed down as the program grew (7.7 ms of PostgreSQL per call at 15,000
-- accounts on average, and growing). Built concurrently, so that a running ledger keeps writing.

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_master ON accounts (master_account_id)
    WHERE master_account_id IS NOT NULL;

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS accounts_by_master;

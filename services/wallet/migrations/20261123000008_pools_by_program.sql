-- ListPools (store.find_pools) reads a program's pools in (create_time, pool_id) order, and pools
-- had no index on program_id: every page was a sequential scan of every program's pools and a
-- sort of the program's. With this index a page reads the program's pools in order and stops at
-- its end. Built concurrently, one index per file (see 20261123000007).

-- migrate:up transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS pools_by_program ON pools (program_id, create_time, pool_id);

-- migrate:down transaction:false
DROP INDEX CONCURRENTLY IF EXISTS pools_by_program;

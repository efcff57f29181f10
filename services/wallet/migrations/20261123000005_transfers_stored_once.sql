-- The per-row costs of the transfer path (issue #3: 100-transfer batches at 20,000 transfers/s).
--
-- * Each transfer is stored once. Its row carried the submitted transfer three times over: the
--   canonical protobuf (`body`), a JSON copy of the request, and a JSON outcome whose times
--   repeat the row's own columns: about 1 KB a transfer, most of the ledger's write volume, and
--   a good share of the CPU on both sides (JSON encoding in the wallet, jsonb parsing here).
--   Now a client's transfer is read back from its body (the wallet's own transfers, whose bodies
--   are not a `Transfer`, keep their JSON request), and `outcome` and `allocations` keep only
--   what no column holds, as compact text (see services/wallet/store.py, encode_outcome and
--   encode_allocations, for the formats; the conversion below writes the same).
-- * lots.account_id's foreign key fired an RI trigger (a key-share lock of the account) per new
--   lot. Lots are only made for accounts that the same transaction loaded under lock, and
--   accounts are never deleted: the key protects nothing the code does not already guarantee.
-- * Balance and lot updates stay on their page (HOT updates: no new index entries, a third of
--   the WAL) when the page has room and no indexed column changes. accounts and lots leave room
--   in their pages (for pages written from now on), and the partial indexes of lots test
--   generated flags instead of remaining and held, which almost every lot update changes: a
--   lot's flag changes only when it is spent, or becomes wholly held (queries name the flags,
--   so that the planner uses the indexes).

-- migrate:up
CREATE FUNCTION pg_temp.balance_text(balance jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN balance IS NULL OR jsonb_typeof(balance) = 'null' THEN '' ELSE concat_ws(',',
        balance->>0, balance->>1, balance->>2, balance->>3, balance->>4, balance->>5, coalesce(balance->>6, ''),
        balance->>7, balance->8->>0, balance->8->>1, balance->8->>2) END
$$;
CREATE FUNCTION pg_temp.allocations_text(allocations jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(string_agg((pair->>0) || ':' || (pair->>1), ',' ORDER BY position), '')
    FROM jsonb_array_elements(allocations) WITH ORDINALITY AS pairs(pair, position)
$$;

ALTER TABLE transfers
    ALTER COLUMN outcome TYPE text USING concat_ws('|',
        outcome->>'code', outcome->>'a', outcome->>'ra', outcome->>'lot',
        pg_temp.balance_text(outcome->'db'), pg_temp.balance_text(outcome->'cb')),
    ALTER COLUMN allocations DROP DEFAULT,
    ALTER COLUMN allocations TYPE text USING pg_temp.allocations_text(allocations),
    ALTER COLUMN allocations SET DEFAULT '',
    ALTER COLUMN request DROP NOT NULL,
    ALTER COLUMN request TYPE jsonb USING CASE WHEN transfer_id LIKE 'wallet:%' THEN request END;

ALTER TABLE lots DROP CONSTRAINT lots_account_id_fkey;
ALTER TABLE accounts SET (fillfactor = 85);
ALTER TABLE lots
    SET (fillfactor = 85),
    ADD COLUMN spent boolean NOT NULL GENERATED ALWAYS AS (remaining = 0) STORED,
    ADD COLUMN expirable boolean NOT NULL GENERATED ALWAYS AS (remaining > held AND expiry_time IS NOT NULL) STORED;
DROP INDEX lots_left_by_account;
DROP INDEX lots_to_expire;
CREATE INDEX lots_left_by_account ON lots (account_id) WHERE NOT spent;
CREATE INDEX lots_to_expire ON lots (expiry_time) WHERE expirable;

-- migrate:down
-- The JSON copies of clients' requests cannot be rebuilt in SQL (they come from protobuf bodies).
DO $$ BEGIN RAISE EXCEPTION 'irreversible: requests cannot be rebuilt from their protobuf bodies in SQL'; END $$;

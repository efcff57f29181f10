-- The member's wallet sub-accounts as the wallet opened them ([[account_id, kind], ...] in the
-- wallet's order), returned in Resolution.member_accounts so that processing can address them
-- without asking the wallet. NULL for members registered before this column, and while the
-- registration is pending.

-- migrate:up
ALTER TABLE members ADD COLUMN wallet_accounts jsonb;

-- migrate:down
ALTER TABLE members DROP COLUMN wallet_accounts;

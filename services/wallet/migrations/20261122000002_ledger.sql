-- The double-entry points ledger. The rules live in services/wallet/domain; these constraints
-- repeat the money invariants so that a bug there cannot write a broken ledger:
--   * a member/pool account never goes below its floor (0, or -debt_limit when debt is allowed);
--   * a lot never holds more than it has, nor has more than it got;
--   * a hold never posts more than it held; reversals never exceed their original;
--   * a transfer id is decided exactly once (primary key).
-- The sum of posted balances of all accounts of a unit is zero; tests and `loyalty` audits check it
-- (it spans rows, so no row constraint can).

-- migrate:up
CREATE TABLE account_kinds (
    program_id          text        NOT NULL CHECK (program_id <> ''),
    kind                text        NOT NULL CHECK (kind ~ '^[a-z0-9_]{1,32}$'),
    display_name        text        NOT NULL,
    unit_type           smallint    NOT NULL CHECK (unit_type IN (1, 2)),
    currency_code       text        NOT NULL DEFAULT '',
    scale               smallint    NOT NULL CHECK (scale BETWEEN 0 AND 6),
    spendable           boolean     NOT NULL,
    transferable        boolean     NOT NULL,
    overdraft_mode      smallint    NOT NULL CHECK (overdraft_mode IN (1, 2)),
    debt_limit_minor    bigint      NOT NULL DEFAULT 0 CHECK (debt_limit_minor >= 0),
    balance_max_minor   bigint      NOT NULL DEFAULT 0 CHECK (balance_max_minor >= 0),
    activation_delay_s  bigint      NOT NULL DEFAULT 0 CHECK (activation_delay_s BETWEEN 0 AND 31536000),
    expiry_mode         smallint    NOT NULL CHECK (expiry_mode IN (1, 2, 3)),
    lifetime_s          bigint      NOT NULL DEFAULT 0 CHECK (lifetime_s >= 0),
    fixed_expiry_time   timestamptz,
    redemption_priority integer     NOT NULL DEFAULT 0,
    open_by_default     boolean     NOT NULL DEFAULT true,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, kind)
);

CREATE TABLE master_accounts (
    master_account_id uuid        PRIMARY KEY,
    program_id        text        NOT NULL,
    member_id         text        NOT NULL CHECK (member_id <> ''),
    state             smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2, 3)),
    freeze_mode       smallint    NOT NULL DEFAULT 0 CHECK (freeze_mode IN (0, 1, 2)),
    state_reason      text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    state_time        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (program_id, member_id)
);

CREATE TABLE accounts (
    account_id        uuid        PRIMARY KEY,
    program_id        text        NOT NULL,
    type              smallint    NOT NULL CHECK (type IN (1, 2, 3)),
    kind              text,
    master_account_id uuid        REFERENCES master_accounts,
    member_id         text,
    system_role       smallint    NOT NULL DEFAULT 0 CHECK (system_role BETWEEN 0 AND 5),
    partner_id        text        NOT NULL DEFAULT '',
    pool_id           uuid,
    unit_type         smallint    NOT NULL CHECK (unit_type IN (1, 2)),
    currency_code     text        NOT NULL DEFAULT '',
    scale             smallint    NOT NULL,
    state             smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2, 3)),
    freeze_mode       smallint    NOT NULL DEFAULT 0 CHECK (freeze_mode IN (0, 1, 2)),
    state_reason      text        NOT NULL DEFAULT '',
    -- The master account's state, mirrored onto each sub-account in the same transaction that
    -- changes it: transfer batches lock account rows only, so a master freeze waits for the
    -- batches in flight and every later batch sees it.
    master_state       smallint   NOT NULL DEFAULT 1 CHECK (master_state IN (1, 2, 3)),
    master_freeze_mode smallint   NOT NULL DEFAULT 0 CHECK (master_freeze_mode IN (0, 1, 2)),
    is_primary        boolean     NOT NULL DEFAULT false,
    external_ref      text,
    display_name      text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    state_time        timestamptz NOT NULL DEFAULT now(),
    -- Member and pool balances. SYSTEM accounts keep theirs in account_stripes (no hot row).
    debits_posted     bigint      NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted    bigint      NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending    bigint      NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending   bigint      NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    lifetime_earned   bigint      NOT NULL DEFAULT 0,
    entry_sequence    bigint      NOT NULL DEFAULT 0,
    -- The lowest posted - held may reach: 0 without overdraft, -debt_limit with debt allowed,
    -- NULL when unbounded (SYSTEM accounts, debt allowed without a limit).
    balance_floor     bigint,
    CONSTRAINT balance_above_floor
        CHECK (balance_floor IS NULL OR credits_posted - debits_posted - debits_pending >= balance_floor),
    CONSTRAINT member_accounts_have_a_kind CHECK ((type = 3) = (kind IS NULL)),
    CONSTRAINT system_accounts_have_a_role CHECK ((type = 3) = (system_role <> 0)),
    FOREIGN KEY (program_id, kind) REFERENCES account_kinds
);
CREATE UNIQUE INDEX accounts_one_primary_per_kind ON accounts (master_account_id, kind) WHERE is_primary;
CREATE UNIQUE INDEX accounts_one_system_per_role
    ON accounts (program_id, system_role, partner_id, unit_type, currency_code, scale) WHERE type = 3;
CREATE UNIQUE INDEX accounts_external_ref ON accounts (program_id, external_ref) WHERE external_ref IS NOT NULL;
CREATE INDEX accounts_by_member ON accounts (member_id) WHERE member_id IS NOT NULL;

-- A SYSTEM account's balance is the sum of its stripes; each batch writes one stripe, so
-- concurrent writers rarely meet on the same row. Posted totals only grow, in every stripe.
-- Pending totals do not: a hold may be counted in one stripe and released in another, so only
-- their sum over the stripes is meaningful (and never negative).
CREATE TABLE account_stripes (
    account_id      uuid     NOT NULL REFERENCES accounts,
    stripe          smallint NOT NULL CHECK (stripe BETWEEN 0 AND 63),
    debits_posted   bigint   NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint   NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint   NOT NULL DEFAULT 0,
    credits_pending bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, stripe)
);

-- Every decided transfer id: applied (PENDING, POSTED, VOIDED, EXPIRED) or a recorded rejection.
CREATE TABLE transfers (
    transfer_id             text        PRIMARY KEY,
    -- The canonical encoding of the submitted body: equal bodies are the same transfer.
    body                    bytea       NOT NULL,
    request                 jsonb       NOT NULL,
    state                   smallint    NOT NULL CHECK (state BETWEEN 1 AND 5),
    rejection_code          smallint,
    debit_account_id        text        NOT NULL,
    credit_account_id       text        NOT NULL,
    amount                  bigint      NOT NULL CHECK (amount >= 0),
    reason                  smallint    NOT NULL,
    operation_id            text        NOT NULL DEFAULT '',
    terminal_id             text        NOT NULL DEFAULT '',
    receipt_id              text        NOT NULL DEFAULT '',
    recorded_time           timestamptz NOT NULL,
    effective_time          timestamptz NOT NULL,
    posted_amount           bigint      NOT NULL DEFAULT 0,
    pending_expiry_time     timestamptz,
    resolved_by_transfer_id text        NOT NULL DEFAULT '',
    resolved_time           timestamptz,
    reversed_amount         bigint      NOT NULL DEFAULT 0,
    allocations             jsonb       NOT NULL DEFAULT '[]',
    outcome                 jsonb       NOT NULL,
    CONSTRAINT rejected_iff_rejection_code CHECK ((state = 5) = (rejection_code IS NOT NULL)),
    CONSTRAINT posted_within_hold CHECK (posted_amount BETWEEN 0 AND amount),
    CONSTRAINT reversed_within_original CHECK (reversed_amount BETWEEN 0 AND amount),
    CONSTRAINT open_holds_have_a_deadline CHECK (state <> 1 OR pending_expiry_time IS NOT NULL)
);
CREATE INDEX transfers_open_holds ON transfers (pending_expiry_time) WHERE state = 1;
CREATE INDEX transfers_by_operation ON transfers (operation_id) WHERE operation_id <> '';
CREATE INDEX transfers_by_receipt ON transfers (terminal_id, receipt_id) WHERE receipt_id <> '';

CREATE TABLE lots (
    lot_id          uuid        PRIMARY KEY,
    account_id      uuid        NOT NULL REFERENCES accounts,
    transfer_id     text        NOT NULL,
    reason          smallint    NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    remaining       bigint      NOT NULL,
    held            bigint      NOT NULL DEFAULT 0,
    expired_amount  bigint      NOT NULL DEFAULT 0,
    activation_time timestamptz NOT NULL,
    expiry_time     timestamptz,
    effective_time  timestamptz NOT NULL,
    CONSTRAINT lot_bounds CHECK (0 <= held AND held <= remaining AND remaining <= amount),
    CONSTRAINT lot_accounting CHECK (remaining + expired_amount <= amount)
);
CREATE INDEX lots_left_by_account ON lots (account_id) WHERE remaining > 0;
CREATE INDEX lots_to_expire ON lots (expiry_time) WHERE remaining > held AND expiry_time IS NOT NULL;

-- The history of member and pool accounts: one row per movement, with the balances after it.
CREATE TABLE entries (
    account_id              uuid        NOT NULL,
    sequence                bigint      NOT NULL,
    transfer_id             text        NOT NULL,
    type                    smallint    NOT NULL,
    direction               smallint    NOT NULL,
    amount                  bigint      NOT NULL,
    released_amount         bigint      NOT NULL,
    counterparty_account_id text        NOT NULL,
    available               bigint      NOT NULL,
    pending                 bigint      NOT NULL,
    held                    bigint      NOT NULL,
    next_expiry_amount      bigint      NOT NULL,
    next_expiry_time        timestamptz,
    lifetime_earned         bigint      NOT NULL,
    recorded_time           timestamptz NOT NULL,
    effective_time          timestamptz NOT NULL,
    PRIMARY KEY (account_id, sequence)
);

-- migrate:down
DROP TABLE entries;
DROP TABLE lots;
DROP TABLE transfers;
DROP TABLE account_stripes;
DROP TABLE accounts;
DROP TABLE master_accounts;
DROP TABLE account_kinds;

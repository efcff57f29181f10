-- Operations: the record of every purchase, refund and cancel, and the recovery point of the
-- purchase saga (DESIGN §2). A row is written BEFORE processing asks the wallet to move
-- anything, with the wallet transfers it will make (`plan`, derived from operation_id), so a
-- retry or the recovery worker can always finish what was started.

-- migrate:up
CREATE TABLE operations (
    operation_id          text        PRIMARY KEY,
    type                  smallint    NOT NULL,   -- loyalty.processing.v1.OperationType
    state                 smallint    NOT NULL,   -- loyalty.processing.v1.OperationState
    terminal_id           text        NOT NULL,
    outlet_id             text        NOT NULL,
    partner_id            text        NOT NULL,
    member_id             text        NOT NULL DEFAULT '',
    receipt_id            text        NOT NULL DEFAULT '',
    -- (terminal_id, idempotency_key) is the scope of the register's key: the database, not
    -- Redis, guarantees that one key has one operation.
    idempotency_key       text        NOT NULL,
    request_hash          bytea       NOT NULL,
    method                text        NOT NULL,
    offline               boolean     NOT NULL DEFAULT false,
    original_operation_id text,                   -- refunds and cancels: the purchase
    effective_time        timestamptz NOT NULL,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    -- While a request or the recovery worker drives the operation, nobody else does until then.
    lease_until           timestamptz,
    -- AUTHORIZED purchases: when the authorization expires.
    expire_time           timestamptz,
    -- The serialized loyalty.processing.v1.Operation (without the receipt) as last recorded.
    operation             bytea       NOT NULL,
    -- The serialized loyalty.common.v1.Receipt (as authorized, then as captured).
    receipt               bytea,
    -- The saga's next step: the wallet transfers to make (JSON), empty when nothing is left.
    plan                  jsonb       NOT NULL DEFAULT '[]',
    -- The wallet transfers that moved (or hold) points for the member, with what refunds took
    -- back of each (JSON): refunds reverse exactly these.
    postings              jsonb       NOT NULL DEFAULT '[]',
    -- Purchases: per receipt line, what refunds took so far (JSON, by position).
    refunded              jsonb       NOT NULL DEFAULT '{}',
    -- The key of the Capture or Void request that moved an authorization on (replays).
    resolution_key        text,
    -- The serialized response of the request that created the operation, for byte-identical
    -- replays; NULL while it is PROCESSING.
    response              bytea,
    CONSTRAINT operations_key UNIQUE (terminal_id, idempotency_key)
);

-- At most one live purchase per receipt: a second one is ALREADY_EXISTS (processing.proto,
-- RECEIPTS). 1 PROCESSING, 2 AUTHORIZED, 3 CAPTURED, 6 PARTIALLY_REFUNDED, 7 REFUNDED.
CREATE UNIQUE INDEX operations_live_receipt ON operations (terminal_id, receipt_id)
    WHERE type = 1 AND state IN (1, 2, 3, 6, 7);
CREATE INDEX operations_by_create_time ON operations (create_time, operation_id);
CREATE INDEX operations_by_member ON operations (member_id, create_time) WHERE member_id <> '';
CREATE INDEX operations_by_receipt ON operations (terminal_id, receipt_id, create_time);
CREATE INDEX operations_unfinished ON operations (lease_until) WHERE state = 1;
CREATE INDEX operations_authorized ON operations (expire_time) WHERE state = 2;
CREATE INDEX operations_by_original ON operations (original_operation_id) WHERE original_operation_id IS NOT NULL;

-- What the rules need to know about a member's past (EarningRule conditions, usage limits and
-- cumulative progressive tiers). Updated in the same statement that records a capture or refund.
CREATE TABLE member_stats (
    member_id          text   PRIMARY KEY,
    purchase_count     bigint NOT NULL DEFAULT 0,
    app_purchase_count bigint NOT NULL DEFAULT 0,
    -- rule_id -> receipts it gave points to (usage limits; refunds give no uses back).
    rule_uses          jsonb  NOT NULL DEFAULT '{}'
);

-- Money spent (the accrual base) per member and local day of the program's time zone, for
-- cumulative progressive rules (month, quarter, year, rolling days).
CREATE TABLE member_daily_spend (
    member_id text   NOT NULL,
    day       date   NOT NULL,
    amount    bigint NOT NULL,
    PRIMARY KEY (member_id, day)
);

-- Offline cancels that arrived before their purchase: the purchase is recorded VOIDED when it
-- comes (processing.proto, OfflineCancel).
CREATE TABLE early_cancels (
    terminal_id  text        NOT NULL,
    receipt_id   text        NOT NULL,
    operation_id text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, receipt_id)
);

-- migrate:down
DROP TABLE early_cancels;
DROP TABLE member_daily_spend;
DROP TABLE member_stats;
DROP TABLE operations;

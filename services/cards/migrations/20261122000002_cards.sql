-- Members, number templates, card batches, cards, their history, and the use of QR tokens.
-- Enum columns hold the numbers of protos/loyalty/cards/v1/cards.proto (and common/v1 for actor
-- types); the checks repeat the domain's invariants as a last line of defence.

-- migrate:up
CREATE TABLE members (
    member_id              uuid        PRIMARY KEY,
    program_id             text        NOT NULL CHECK (program_id <> ''),
    partner_id             text        NOT NULL DEFAULT '',
    -- E.164, unique among the program's members that are not CLOSED (index below).
    phone                  text        NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    first_name             text        NOT NULL DEFAULT '',
    last_name              text        NOT NULL DEFAULT '',
    middle_name            text        NOT NULL DEFAULT '',
    email                  text        NOT NULL DEFAULT '',
    -- The birth date, all three or none; the year may be 0 (unknown).
    birth_year             smallint,
    birth_month            smallint,
    birth_day              smallint,
    language_code          text        NOT NULL DEFAULT '',
    segments               text[]      NOT NULL DEFAULT '{}',
    -- {"sms": {"status": 1, "time": "...", "actor_type": 3, "actor_id": "..."}, "email": ..., "push": ...}
    consents               jsonb       NOT NULL DEFAULT '{}',
    state                  smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2, 3)),
    block_reason           smallint    NOT NULL DEFAULT 0,
    state_comment          text        NOT NULL DEFAULT '',
    state_actor_type       smallint    NOT NULL,
    state_actor_id         text        NOT NULL,
    state_time             timestamptz NOT NULL DEFAULT now(),
    -- NULL while the wallet accounts are being opened: a registration that is not complete yet
    -- (the wallet was unreachable). A retry of the registration or the background worker
    -- completes it; only then is member.registered emitted.
    master_account_id      text,
    registration_channel   smallint    NOT NULL DEFAULT 0,
    registration_outlet_id text        NOT NULL DEFAULT '',
    -- "<actor type>:<actor id>/<idempotency key>" of the registration that created the member.
    registration_key       text        NOT NULL DEFAULT '',
    create_time            timestamptz NOT NULL DEFAULT now(),
    update_time            timestamptz NOT NULL DEFAULT now(),
    CHECK ((birth_year IS NULL) = (birth_month IS NULL) AND (birth_month IS NULL) = (birth_day IS NULL)),
    CHECK ((state = 2) = (block_reason <> 0)),
    CHECK (master_account_id IS NULL OR master_account_id <> '')
);
CREATE UNIQUE INDEX members_live_phone ON members (program_id, phone) WHERE state <> 3;
CREATE INDEX members_accounts_pending ON members (create_time) WHERE master_account_id IS NULL;

CREATE TABLE card_number_templates (
    template_id        uuid        PRIMARY KEY,
    program_id         text        NOT NULL CHECK (program_id <> ''),
    display_name       text        NOT NULL CHECK (display_name <> ''),
    prefix             text        NOT NULL CHECK (prefix ~ '^[0-9]{0,12}$'),
    length             smallint    NOT NULL CHECK (length BETWEEN 8 AND 19),
    check_digit_scheme smallint    NOT NULL CHECK (check_digit_scheme IN (1, 2)),
    barcode_symbology  smallint    NOT NULL CHECK (barcode_symbology IN (1, 2)),
    qr_payload_format  text        NOT NULL DEFAULT '',
    capacity           bigint      NOT NULL CHECK (capacity >= 1000000),
    allocated_count    bigint      NOT NULL DEFAULT 0 CHECK (allocated_count BETWEEN 0 AND capacity),
    create_time        timestamptz NOT NULL DEFAULT now(),
    creator_type       smallint    NOT NULL,
    creator_id         text        NOT NULL,
    UNIQUE (program_id, display_name),
    CHECK (length - length(prefix) - 1 >= 6),
    CHECK (barcode_symbology <> 1 OR (length = 13 AND prefix LIKE '2%' AND check_digit_scheme = 2))
);
CREATE INDEX card_number_templates_by_program ON card_number_templates (program_id, create_time, template_id);

CREATE TABLE card_batches (
    batch_id     uuid        PRIMARY KEY,
    program_id   text        NOT NULL,
    template_id  uuid        NOT NULL REFERENCES card_number_templates,
    card_type    smallint    NOT NULL CHECK (card_type BETWEEN 1 AND 5),
    card_count   integer     NOT NULL CHECK (card_count BETWEEN 1 AND 100000),
    display_name text        NOT NULL DEFAULT '',
    expire_time  timestamptz,
    create_time  timestamptz NOT NULL DEFAULT now(),
    creator_type smallint    NOT NULL,
    creator_id   text        NOT NULL
);
CREATE INDEX card_batches_by_program ON card_batches (program_id, create_time DESC, batch_id DESC);

CREATE TABLE cards (
    card_id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Unique across the platform; "C" collation: plain byte order, the fastest to index.
    card_number           text        COLLATE "C" NOT NULL UNIQUE CHECK (card_number ~ '^[0-9]{8,19}$'),
    program_id            text        NOT NULL,
    template_id           uuid        NOT NULL REFERENCES card_number_templates,
    batch_id              uuid        REFERENCES card_batches,
    type                  smallint    NOT NULL CHECK (type BETWEEN 1 AND 5),
    state                 smallint    NOT NULL CHECK (state BETWEEN 1 AND 6),
    -- Set once when bound, never changed: a card belongs to at most one member, ever.
    member_id             uuid        REFERENCES members,
    account_mode          smallint    NOT NULL DEFAULT 0 CHECK (account_mode BETWEEN 0 AND 3),
    account_id            text        NOT NULL DEFAULT '',
    gift_account_id       text        NOT NULL DEFAULT '',
    label                 text        NOT NULL DEFAULT '',
    block_reason          smallint    NOT NULL DEFAULT 0,
    block_comment         text        NOT NULL DEFAULT '',
    block_actor_type      smallint    NOT NULL DEFAULT 0,
    block_actor_id        text        NOT NULL DEFAULT '',
    block_time            timestamptz,
    block_previous_state  smallint    NOT NULL DEFAULT 0,
    replaced_by_card_id   uuid,
    replaces_card_id      uuid,
    expire_time           timestamptz,
    create_time           timestamptz NOT NULL DEFAULT now(),
    issue_time            timestamptz,
    bind_time             timestamptz,
    state_time            timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 4) = (block_reason <> 0)),
    CHECK (state <> 4 OR block_previous_state IN (1, 2, 3)),
    CHECK ((state = 5) = (replaced_by_card_id IS NOT NULL)),
    -- An ACTIVE gift card always has its gift balance account.
    CHECK (type <> 4 OR state <> 3 OR gift_account_id <> ''),
    CHECK ((member_id IS NULL) = (bind_time IS NULL)),
    CHECK (account_mode IN (0, 1) OR account_id <> '')
);
CREATE INDEX cards_by_batch ON cards (batch_id, card_number) WHERE batch_id IS NOT NULL;
CREATE INDEX cards_by_member ON cards (member_id, bind_time, card_id) WHERE member_id IS NOT NULL;
CREATE INDEX cards_to_expire ON cards (expire_time) WHERE expire_time IS NOT NULL AND state IN (1, 2, 3, 4);

-- The history of every card: every state change and binding with actor, reason and comment.
-- A batch card's first entry (GENERATED) is not stored: it is derived from its batch, which
-- keeps generating 100,000 cards one row per card.
CREATE TABLE card_events (
    sequence           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id           uuid        NOT NULL UNIQUE,
    card_id            uuid        NOT NULL REFERENCES cards,
    type               smallint    NOT NULL CHECK (type BETWEEN 1 AND 9),
    from_state         smallint    NOT NULL,
    to_state           smallint    NOT NULL,
    block_reason       smallint    NOT NULL DEFAULT 0,
    replacement_reason smallint    NOT NULL DEFAULT 0,
    comment            text        NOT NULL DEFAULT '',
    actor_type         smallint    NOT NULL,
    actor_id           text        NOT NULL,
    member_id          uuid,
    related_card_id    uuid,
    event_time         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_events_by_card ON card_events (card_id, sequence);

-- Dynamic QR tokens that were presented: single use is decided here (PRIMARY KEY), not in
-- Redis, so losing Redis cannot let a token be used twice. Rows are purged after expiry.
CREATE TABLE qr_token_uses (
    token_id    bytea       PRIMARY KEY,
    actor_type  smallint    NOT NULL,
    actor_id    text        NOT NULL,
    expire_time timestamptz NOT NULL,
    use_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX qr_token_uses_by_expiry ON qr_token_uses (expire_time);

-- migrate:down
DROP TABLE qr_token_uses;
DROP TABLE card_events;
DROP TABLE cards;
DROP TABLE card_batches;
DROP TABLE card_number_templates;
DROP TABLE members;

-- Household pools: a shared POOL account and its members, with per-period spending limits.

-- migrate:up
CREATE TABLE pools (
    pool_id         uuid        PRIMARY KEY,
    program_id      text        NOT NULL,
    kind            text        NOT NULL,
    account_id      uuid        NOT NULL UNIQUE REFERENCES accounts,
    owner_member_id text        NOT NULL,
    display_name    text        NOT NULL,
    time_zone       text        NOT NULL DEFAULT 'UTC',
    state           smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    create_time     timestamptz NOT NULL DEFAULT now(),
    close_time      timestamptz,
    FOREIGN KEY (program_id, kind) REFERENCES account_kinds
);

CREATE TABLE pool_members (
    pool_id      uuid        NOT NULL REFERENCES pools,
    member_id    text        NOT NULL,
    program_id   text        NOT NULL,
    kind         text        NOT NULL,
    role         smallint    NOT NULL CHECK (role IN (1, 2)),
    limit_period smallint    NOT NULL CHECK (limit_period BETWEEN 1 AND 5),
    limit_minor  bigint      NOT NULL DEFAULT 0 CHECK (limit_minor >= 0),
    join_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, member_id),
    CONSTRAINT owners_have_no_limit CHECK (role = 2 OR limit_period = 1)
);
-- A member belongs to at most one pool per program and kind.
CREATE UNIQUE INDEX pool_members_one_pool_per_kind ON pool_members (program_id, kind, member_id);

-- What each member spent (open holds included) per limit period.
CREATE TABLE pool_spending (
    pool_id      uuid        NOT NULL,
    member_id    text        NOT NULL,
    period_start timestamptz NOT NULL,
    spent_minor  bigint      NOT NULL CHECK (spent_minor >= 0),
    PRIMARY KEY (pool_id, member_id, period_start)
);

-- migrate:down
DROP TABLE pool_spending;
DROP TABLE pool_members;
DROP TABLE pools;

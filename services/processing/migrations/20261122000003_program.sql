-- The program's configuration (loyalty.processing.v1.ProgramAdminService): the program with its
-- draft policies, the network (partners, outlets, terminals), the draft earning rules and
-- campaigns, and the published, immutable rule set versions.
--
-- Every admin write runs in one transaction that first bumps `config_generation` (so the register
-- flow can tell cheaply that what it cached is stale) and ends with a row in `config_changes`
-- (the audit trail). Bumping first also serializes admin writes: they are rare, and this makes
-- quotas, code uniqueness and version numbering race-free without retries.
--
-- Enums are stored as the proto's numbers (smallint). Rule bodies and policies are the proto
-- messages in their canonical JSON (proto field names), so psql shows them readably.

-- migrate:up
CREATE TABLE config_generation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint  NOT NULL DEFAULT 0
);
INSERT INTO config_generation DEFAULT VALUES;

CREATE TABLE config_changes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    generation    bigint      NOT NULL,
    actor_type    smallint    NOT NULL,   -- loyalty.common.v1.ActorType
    actor_id      text        NOT NULL,
    action        text        NOT NULL,   -- the RPC, e.g. "UpdateTerminal"
    resource_type text        NOT NULL,
    resource_id   text        NOT NULL,
    change_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX config_changes_by_resource ON config_changes (resource_type, resource_id, id);

-- One program per deployment today (program_admin.proto): the row is created here, with the
-- defaults the proto calls "out of the box", and an opaque generated program_id. The operator
-- adjusts it with UpdateProgram (currency and scales only before the first operation).
CREATE TABLE program (
    program_id            text        PRIMARY KEY,
    singleton             boolean     NOT NULL DEFAULT true UNIQUE CHECK (singleton),
    name                  text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    type                  smallint    NOT NULL CHECK (type IN (1, 2)),
    currency_code         text        NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    currency_scale        smallint    NOT NULL CHECK (currency_scale BETWEEN 0 AND 4),
    point_scale           smallint    NOT NULL CHECK (point_scale BETWEEN 0 AND 4),
    time_zone             text        NOT NULL CHECK (time_zone <> ''),
    authorization_ttl     interval    NOT NULL,
    authorization_ttl_max interval    NOT NULL,
    offline_max_age       interval    NOT NULL,
    risk_fallback         smallint    NOT NULL CHECK (risk_fallback IN (1, 2, 3)),
    -- The DRAFT policies (loyalty.processing.v1 AccrualPolicy, RedemptionPolicy, RefundPolicy).
    accrual_policy        jsonb       NOT NULL,
    redemption_policy     jsonb       NOT NULL,
    refund_policy         jsonb       NOT NULL,
    -- The etag: bumped by every UpdateProgram.
    revision              bigint      NOT NULL DEFAULT 1,
    -- Bumped by every change of the draft (policies, rules, campaigns); a version records the
    -- value it froze, so "has unpublished changes" is one comparison.
    draft_revision        bigint      NOT NULL DEFAULT 1,
    update_time           timestamptz NOT NULL DEFAULT now(),
    CHECK (authorization_ttl > interval '0' AND authorization_ttl <= authorization_ttl_max),
    CHECK (authorization_ttl_max <= interval '7 days'),
    CHECK (offline_max_age > interval '0' AND offline_max_age <= interval '90 days')
);
INSERT INTO program (
    program_id, name, type, currency_code, currency_scale, point_scale, time_zone, authorization_ttl,
    authorization_ttl_max, offline_max_age, risk_fallback, accrual_policy, redemption_policy, refund_policy
) VALUES (
    gen_random_uuid()::text, 'Loyalty program', 1, 'RUB', 2, 2, 'Europe/Moscow', interval '15 minutes',
    interval '24 hours', interval '7 days', 2,
    '{"base": "ACCRUAL_BASE_PAID_WITH_MONEY", "rounding": "ROUNDING_MODE_DOWN",
      "lifetime": {"expiry_rounding": "EXPIRY_ROUNDING_NONE"}, "account_kind": "base"}',
    '{"enabled": true, "products": "REDEEMABLE_PRODUCTS_ALL",
      "point_value": {"points": {"amount_minor": "100", "scale": 2},
                      "money": {"currency_code": "RUB", "amount_minor": "100", "scale": 2}}}',
    '{"shortfall_policy": "REFUND_SHORTFALL_POLICY_WITHIN_BALANCE", "restored_points_min_lifetime": "2592000s"}'
);

CREATE TABLE partners (
    partner_id         text        PRIMARY KEY,
    code               text        NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name               text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    state              smallint    NOT NULL CHECK (state IN (1, 2, 3)),   -- PartnerState
    points_scope       smallint    NOT NULL CHECK (points_scope IN (1, 2)),
    accrual_enabled    boolean     NOT NULL,
    redemption_enabled boolean     NOT NULL,
    account_kind       text        NOT NULL DEFAULT '',
    revision           bigint      NOT NULL DEFAULT 1,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    CHECK ((points_scope = 2) = (account_kind <> ''))
);

CREATE TABLE outlets (
    outlet_id            text        PRIMARY KEY,
    partner_id           text        NOT NULL REFERENCES partners,
    code                 text        NOT NULL CHECK (char_length(code) BETWEEN 1 AND 64),
    name                 text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    state                smallint    NOT NULL CHECK (state IN (1, 2, 3)),   -- OutletState
    region_code          text        NOT NULL DEFAULT '' CHECK (char_length(region_code) <= 64),
    address_country_code text        NOT NULL DEFAULT '',
    address_region       text        NOT NULL DEFAULT '',
    address_city         text        NOT NULL DEFAULT '',
    address_postal_code  text        NOT NULL DEFAULT '',
    address_lines        text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(address_lines) <= 3),
    latitude_e7          integer     CHECK (latitude_e7 BETWEEN -900000000 AND 900000000),
    longitude_e7         integer     CHECK (longitude_e7 BETWEEN -1800000000 AND 1800000000),
    -- Empty: the program's time zone.
    time_zone            text        NOT NULL DEFAULT '',
    revision             bigint      NOT NULL DEFAULT 1,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (partner_id, code),
    CHECK ((latitude_e7 IS NULL) = (longitude_e7 IS NULL))
);
CREATE INDEX outlets_by_region ON outlets (region_code, partner_id, code);

CREATE TABLE terminals (
    terminal_id     text        PRIMARY KEY CHECK (terminal_id ~ '^[A-Za-z0-9_.:/-]{1,64}$'),
    outlet_id       text        NOT NULL REFERENCES outlets,
    name            text        NOT NULL DEFAULT '' CHECK (char_length(name) <= 128),
    serial_number   text        NOT NULL DEFAULT '' CHECK (char_length(serial_number) <= 128),
    state           smallint    NOT NULL CHECK (state IN (1, 2, 3)),   -- TerminalState
    default_channel smallint    NOT NULL CHECK (default_channel IN (1, 2, 3)),   -- SalesChannel
    offline_allowed boolean     NOT NULL,
    -- Written by the register flow, at most once a minute per terminal (not an admin change).
    last_seen_time  timestamptz,
    revision        bigint      NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminals_by_outlet ON terminals (outlet_id, terminal_id);

CREATE TABLE campaigns (
    campaign_id text        PRIMARY KEY,
    code        text        NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    state       smallint    NOT NULL CHECK (state IN (1, 2, 3)),   -- CampaignState
    start_time  timestamptz NOT NULL,
    end_time    timestamptz CHECK (end_time > start_time),   -- NULL: open-ended
    -- Empty: every partner takes part.
    partner_ids text[]      NOT NULL DEFAULT '{}' CHECK (cardinality(partner_ids) <= 1000),
    revision    bigint      NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_by_start ON campaigns (start_time, code);

CREATE TABLE earning_rules (
    rule_id     text        PRIMARY KEY,
    code        text        NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_.-]{1,64}$'),
    state       smallint    NOT NULL CHECK (state IN (1, 2, 3)),   -- EarningRuleState
    campaign_id text        REFERENCES campaigns,
    partner_id  text        REFERENCES partners,
    priority    integer     NOT NULL CHECK (priority BETWEEN -1000000 AND 1000000),
    -- The rest of the EarningRule (name, reward, target, condition, ...) as canonical JSON.
    body        jsonb       NOT NULL,
    revision    bigint      NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX earning_rules_in_order ON earning_rules (priority DESC, code);
CREATE INDEX earning_rules_by_campaign ON earning_rules (campaign_id) WHERE campaign_id IS NOT NULL;
CREATE INDEX earning_rules_by_partner ON earning_rules (partner_id) WHERE partner_id IS NOT NULL;

-- Published versions. The state is not stored: it follows from the clock (SCHEDULED until
-- effective_time, then CURRENT until a later version takes effect, then SUPERSEDED) except for
-- CANCELLED, which is `cancel_time`.
CREATE TABLE rule_set_versions (
    version            bigint      PRIMARY KEY CHECK (version > 0),
    effective_time     timestamptz NOT NULL,
    publish_time       timestamptz NOT NULL DEFAULT now(),
    published_by_type  smallint    NOT NULL,
    published_by_id    text        NOT NULL,
    comment            text        NOT NULL DEFAULT '' CHECK (char_length(comment) <= 500),
    earning_rule_count integer     NOT NULL CHECK (earning_rule_count >= 0),
    campaign_count     integer     NOT NULL CHECK (campaign_count >= 0),
    -- program.draft_revision when it was frozen.
    draft_revision     bigint      NOT NULL,
    -- The serialized loyalty.processing.v1.RuleSetSnapshot.
    snapshot           bytea       NOT NULL,
    cancel_time        timestamptz,
    CHECK (cancel_time IS NULL OR cancel_time < effective_time)
);
-- "The version in force at T": the latest non-cancelled one with effective_time <= T.
CREATE INDEX rule_set_versions_in_force ON rule_set_versions (effective_time DESC, version DESC)
    WHERE cancel_time IS NULL;

-- A published version never changes (only its cancellation is recorded) and is never deleted:
-- operations refer to it by number, offline ones long after.
CREATE FUNCTION rule_set_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'rule set version % cannot be deleted', OLD.version;
    END IF;
    IF (NEW.version, NEW.effective_time, NEW.publish_time, NEW.snapshot, NEW.draft_revision)
        IS DISTINCT FROM (OLD.version, OLD.effective_time, OLD.publish_time, OLD.snapshot, OLD.draft_revision)
        OR OLD.cancel_time IS NOT NULL THEN
        RAISE EXCEPTION 'rule set version % is immutable', OLD.version;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER rule_set_versions_immutable BEFORE UPDATE OR DELETE ON rule_set_versions
    FOR EACH ROW EXECUTE FUNCTION rule_set_versions_immutable();

-- migrate:down
DROP TABLE rule_set_versions;
DROP FUNCTION rule_set_versions_immutable();
DROP TABLE earning_rules;
DROP TABLE campaigns;
DROP TABLE terminals;
DROP TABLE outlets;
DROP TABLE partners;
DROP TABLE program;
DROP TABLE config_changes;
DROP TABLE config_generation;

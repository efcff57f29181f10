-- Idempotency keys of processing's mutating admin RPCs (shared/idempotency.py), scoped per
-- (actor, key) as loyalty.common.v1.IdempotencyKey says for admin calls. The register flow keeps
-- its keys with its operations (scope: terminal), not here.

-- migrate:up
CREATE TABLE idempotency_keys (
    -- Whose key: "admin:<actor type>:<actor id>" (AIP-155 scope per caller).
    scope         text        NOT NULL,
    key           text        NOT NULL,
    -- sha256 of the method and the deterministic encoding of the request.
    fingerprint   bytea       NOT NULL,
    -- The serialized response once the work completed; NULL while it runs.
    response      bytea,
    claim_time    timestamptz NOT NULL DEFAULT now(),
    complete_time timestamptz,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (claim_time);

-- migrate:down
DROP TABLE idempotency_keys;

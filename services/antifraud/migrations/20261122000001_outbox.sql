-- The transactional outbox (DESIGN §2): an event row is written in the same transaction as the
-- change it describes; a relay publishes unpublished rows to Redis Streams in id order and marks
-- them. Consumers drop duplicates by event_id, so publishing twice after a crash is harmless.

-- migrate:up
CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    event_type    text        NOT NULL CHECK (event_type <> ''),
    -- The member (or other aggregate) the event is about: keeps its events in order.
    partition_key text        NOT NULL,
    -- The event's data: a UTF-8 JSON object (see shared/outbox.py).
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- migrate:down
DROP TABLE outbox;

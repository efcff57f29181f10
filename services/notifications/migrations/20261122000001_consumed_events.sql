-- Events consumed from Redis Streams, by event id: delivery is at-least-once, so a consumer
-- records each event id in the same transaction as its effect and skips ids it has seen.

-- migrate:up
CREATE TABLE consumed_events (
    event_id    uuid        PRIMARY KEY,
    stream      text        NOT NULL,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consumed_events_consumed_at ON consumed_events (consumed_at);

-- migrate:down
DROP TABLE consumed_events;

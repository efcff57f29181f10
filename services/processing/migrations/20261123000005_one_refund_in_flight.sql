-- Refunds and cancels of one purchase apply one after another: each is planned from what the
-- earlier ones left (store.insert_refund), so together they can never exceed the original.
-- 1 PROCESSING; 2 REFUND, 3 CANCEL.

-- migrate:up
CREATE UNIQUE INDEX operations_one_refund_in_flight ON operations (original_operation_id)
    WHERE state = 1 AND type IN (2, 3);

-- migrate:down
DROP INDEX operations_one_refund_in_flight;

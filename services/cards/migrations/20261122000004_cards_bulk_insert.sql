-- Generating a batch inserts 100,000 card rows in one statement, so every per-row cost counts
-- (the target is 100,000 cards in 5 s on a 2-core machine). Measured on the embedded stack:
-- * the foreign keys cards.template_id and cards.batch_id fire an RI trigger per row, about a
--   third of the insert's time. Templates and batches are immutable and never deleted, and the
--   code reads the template (and inserts the batch) in the same transaction before the cards, so
--   the keys protect nothing the code does not already guarantee: they are dropped;
-- * the regular expression checking the number's digits is replaced by translate(), cheaper.

-- migrate:up
ALTER TABLE cards DROP CONSTRAINT cards_template_id_fkey;
ALTER TABLE cards DROP CONSTRAINT cards_batch_id_fkey;
ALTER TABLE cards DROP CONSTRAINT cards_card_number_check;
ALTER TABLE cards ADD CONSTRAINT cards_card_number_digits
    CHECK (length(card_number) BETWEEN 8 AND 19 AND translate(card_number, '0123456789', '') = '');

-- migrate:down
ALTER TABLE cards DROP CONSTRAINT cards_card_number_digits;
ALTER TABLE cards ADD CONSTRAINT cards_card_number_check CHECK (card_number ~ '^[0-9]{8,19}$');
ALTER TABLE cards ADD CONSTRAINT cards_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES card_batches;
ALTER TABLE cards ADD CONSTRAINT cards_template_id_fkey FOREIGN KEY (template_id) REFERENCES card_number_templates;

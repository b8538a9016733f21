-- Every key includes the account, the column the usage tables are distributed by on Citus
-- (docs/citus.md): Citus refuses a primary key, unique constraint or foreign key of a
-- distributed table without the distribution column. The surrogate ids stay (still filled
-- from their sequences); every statement of the crate names the account next to them.
ALTER TABLE usage_events DROP CONSTRAINT usage_events_period_id_fkey;
ALTER TABLE usage_reservations DROP CONSTRAINT usage_reservations_period_id_fkey;

ALTER TABLE usage_periods DROP CONSTRAINT usage_periods_pkey;
ALTER TABLE usage_periods ADD CONSTRAINT usage_periods_pkey PRIMARY KEY (account, id);

ALTER TABLE usage_events DROP CONSTRAINT usage_events_pkey;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (account, id);
ALTER TABLE usage_events ADD CONSTRAINT usage_events_period_fkey
    FOREIGN KEY (account, period_id) REFERENCES usage_periods (account, id) ON DELETE CASCADE;

ALTER TABLE usage_reservations DROP CONSTRAINT usage_reservations_pkey;
ALTER TABLE usage_reservations ADD CONSTRAINT usage_reservations_pkey PRIMARY KEY (account, id);
ALTER TABLE usage_reservations ADD CONSTRAINT usage_reservations_period_fkey
    FOREIGN KEY (account, period_id) REFERENCES usage_periods (account, id) ON DELETE CASCADE;

-- A period's expired reservations, found by the sweep of one account's period.
DROP INDEX usage_reservations_period_expires_idx;
CREATE INDEX usage_reservations_period_expires_idx
    ON usage_reservations (account, period_id, expires_at);

DROP INDEX usage_reservations_period_expires_idx;
CREATE INDEX usage_reservations_period_expires_idx ON usage_reservations (period_id, expires_at);

ALTER TABLE usage_reservations DROP CONSTRAINT usage_reservations_period_fkey;
ALTER TABLE usage_reservations DROP CONSTRAINT usage_reservations_pkey;
ALTER TABLE usage_reservations ADD CONSTRAINT usage_reservations_pkey PRIMARY KEY (id);

ALTER TABLE usage_events DROP CONSTRAINT usage_events_period_fkey;
ALTER TABLE usage_events DROP CONSTRAINT usage_events_pkey;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_pkey PRIMARY KEY (id);

ALTER TABLE usage_periods DROP CONSTRAINT usage_periods_pkey;
ALTER TABLE usage_periods ADD CONSTRAINT usage_periods_pkey PRIMARY KEY (id);

ALTER TABLE usage_reservations ADD CONSTRAINT usage_reservations_period_id_fkey
    FOREIGN KEY (period_id) REFERENCES usage_periods (id) ON DELETE CASCADE;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_period_id_fkey
    FOREIGN KEY (period_id) REFERENCES usage_periods (id) ON DELETE CASCADE;

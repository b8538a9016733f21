ALTER TABLE backfill_log DROP CONSTRAINT backfill_log_pkey;
ALTER TABLE backfill_log ADD CONSTRAINT backfill_log_pkey PRIMARY KEY (id);

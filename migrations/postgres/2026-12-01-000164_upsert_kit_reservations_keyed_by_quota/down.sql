ALTER TABLE upsert_kit_reservations DROP CONSTRAINT upsert_kit_reservations_pkey;
ALTER TABLE upsert_kit_reservations ADD CONSTRAINT upsert_kit_reservations_pkey PRIMARY KEY (id);

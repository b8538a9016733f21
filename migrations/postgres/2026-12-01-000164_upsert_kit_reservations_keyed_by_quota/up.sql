-- The ready-made reservations keyed by (quota_key, id), so that the three ready-made tables can
-- be distributed by their quota key on Citus (docs/citus.md), which refuses a primary key
-- without the distribution column. Every statement on reservations names the quota key next to
-- the id already. Idempotent like the first migration (upsert_kit::tables::create_tables runs
-- both): the key is changed only while it is still (id) alone.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'upsert_kit_reservations'::regclass AND contype = 'p'
          AND cardinality(conkey) = 1
    ) THEN
        ALTER TABLE upsert_kit_reservations DROP CONSTRAINT upsert_kit_reservations_pkey;
        ALTER TABLE upsert_kit_reservations
            ADD CONSTRAINT upsert_kit_reservations_pkey PRIMARY KEY (quota_key, id);
    END IF;
END
$$;

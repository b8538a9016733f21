DROP TABLE IF EXISTS upsert_kit_reservations;
DROP TABLE IF EXISTS upsert_kit_quotas;
DROP TABLE IF EXISTS upsert_kit_idempotency_keys;

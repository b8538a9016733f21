CREATE TABLE upsert_kit_reservations_rebuilt (
    id INTEGER PRIMARY KEY,
    quota_key TEXT NOT NULL REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE,
    amount BIGINT NOT NULL CHECK (amount > 0),
    expires_at TIMESTAMP NOT NULL
);
INSERT INTO upsert_kit_reservations_rebuilt (id, quota_key, amount, expires_at)
    SELECT id, quota_key, amount, expires_at FROM upsert_kit_reservations;
DROP TABLE upsert_kit_reservations;
ALTER TABLE upsert_kit_reservations_rebuilt RENAME TO upsert_kit_reservations;
CREATE INDEX upsert_kit_reservations_expiry ON upsert_kit_reservations (expires_at);
CREATE INDEX upsert_kit_reservations_quota_key ON upsert_kit_reservations (quota_key);

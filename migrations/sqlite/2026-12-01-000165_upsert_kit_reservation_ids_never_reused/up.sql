-- Reservation ids are never handed out twice. A plain INTEGER PRIMARY KEY gives a new row the
-- id of the newest row once that row is deleted, so a reservation committed or released (its
-- row deleted) and then committed or released again, say by a retry after an unknown outcome,
-- would settle another caller's reservation. AUTOINCREMENT never reuses an id. SQLite cannot
-- change a column in place: the table is rebuilt, its rows and indexes kept.
-- upsert_kit::tables::create_tables runs this only on a table still without AUTOINCREMENT.
CREATE TABLE upsert_kit_reservations_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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

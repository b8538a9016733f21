-- upsert-kit's ready-made tables (upsert_kit::tables), SQLite twins of the PostgreSQL ones.
CREATE TABLE IF NOT EXISTS upsert_kit_idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL CHECK (key <> '' AND length(CAST(key AS BLOB)) <= 255),
    fingerprint TEXT NOT NULL,
    result TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS upsert_kit_idempotency_keys_created_at
    ON upsert_kit_idempotency_keys (created_at);

CREATE TABLE IF NOT EXISTS upsert_kit_quotas (
    quota_key TEXT PRIMARY KEY NOT NULL CHECK (quota_key <> ''),
    quota_limit BIGINT NOT NULL CHECK (quota_limit >= 0),
    used BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

CREATE TABLE IF NOT EXISTS upsert_kit_reservations (
    id INTEGER PRIMARY KEY,
    quota_key TEXT NOT NULL REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE,
    amount BIGINT NOT NULL CHECK (amount > 0),
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS upsert_kit_reservations_expiry
    ON upsert_kit_reservations (expires_at);
CREATE INDEX IF NOT EXISTS upsert_kit_reservations_quota_key
    ON upsert_kit_reservations (quota_key);

-- upsert-kit's ready-made tables (upsert_kit::tables), MySQL/MariaDB twins of the PostgreSQL ones.
-- Keys are VARCHAR(255) in a binary NO PAD collation: a unique index on TEXT needs a prefix
-- length, the default collations would make 'a' and 'A' one key, and a PAD SPACE one (such as
-- utf8mb4_bin, which this migration first used; migration 000166 changes such tables) 'a' and
-- 'a '. The collation's name differs: MariaDB's utf8mb4_nopad_bin, MySQL's utf8mb4_0900_bin
-- (8.0.17+); each server runs the version comment meant for it (/*M!…*/ MariaDB only,
-- /*!80017 …*/ MySQL, which MariaDB skips) and ignores the other.
CREATE TABLE IF NOT EXISTS upsert_kit_idempotency_keys (
    `key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result LONGTEXT,
    created_at DATETIME(6) NOT NULL,
    INDEX upsert_kit_idempotency_keys_created_at (created_at),
    CHECK (`key` <> '')
);

CREATE TABLE IF NOT EXISTS upsert_kit_quotas (
    quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL PRIMARY KEY,
    quota_limit BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0,
    CHECK (quota_key <> ''),
    CHECK (quota_limit >= 0),
    CHECK (used >= 0),
    CHECK (reserved >= 0)
);

CREATE TABLE IF NOT EXISTS upsert_kit_reservations (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL,
    amount BIGINT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    INDEX upsert_kit_reservations_expiry (expires_at),
    INDEX upsert_kit_reservations_quota_key (quota_key),
    CHECK (amount > 0),
    FOREIGN KEY (quota_key) REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE
);

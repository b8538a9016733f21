-- Back to the PAD SPACE utf8mb4_bin. Fails (duplicate entry) when two keys now differ only by
-- trailing spaces: they would be one key again.
ALTER TABLE upsert_kit_idempotency_keys
    MODIFY `key` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE upsert_kit_reservations DROP FOREIGN KEY upsert_kit_reservations_ibfk_1;
ALTER TABLE upsert_kit_quotas
    MODIFY quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE upsert_kit_reservations
    MODIFY quota_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    ADD FOREIGN KEY (quota_key) REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE;

-- The ready-made tables' keys in a NO PAD binary collation, so that 'a', 'a ' and 'A' are three
-- keys, as on PostgreSQL and SQLite (upsert_kit::limits). utf8mb4_bin, which the first
-- migration used, is PAD SPACE: trailing spaces were ignored, so 'a' and 'a ' were one key.
-- The collation is MariaDB's utf8mb4_nopad_bin or MySQL's utf8mb4_0900_bin (8.0.17+): each
-- server runs the version comment meant for it (/*M!…*/ MariaDB only; /*!80017 …*/ MySQL, which
-- MariaDB skips), and ignores the other.
-- upsert_kit::tables::create_tables runs this only while a key column is still utf8mb4_bin.

-- A reservation kept the key spelled as its caller spelled it, which PAD SPACE matched to its
-- quota's ('a' against 'a '): give it its quota's own key first, or it would lose its quota.
UPDATE upsert_kit_reservations r JOIN upsert_kit_quotas q ON r.quota_key = q.quota_key
    SET r.quota_key = q.quota_key
    WHERE CAST(r.quota_key AS BINARY) <> CAST(q.quota_key AS BINARY);

ALTER TABLE upsert_kit_idempotency_keys
    MODIFY `key` VARCHAR(255) CHARACTER SET utf8mb4
        COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL;

-- Neither server changes the collation of a column in a foreign key, even with
-- foreign_key_checks off: the key (InnoDB's name for the first migration's unnamed one) is
-- dropped and added back once both columns are changed. The reservations' AUTO_INCREMENT
-- counter is kept, so no id is handed out twice.
ALTER TABLE upsert_kit_reservations DROP FOREIGN KEY upsert_kit_reservations_ibfk_1;
ALTER TABLE upsert_kit_quotas
    MODIFY quota_key VARCHAR(255) CHARACTER SET utf8mb4
        COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL;
ALTER TABLE upsert_kit_reservations
    MODIFY quota_key VARCHAR(255) CHARACTER SET utf8mb4
        COLLATE /*M!100202 utf8mb4_nopad_bin */ /*!80017 utf8mb4_0900_bin */ NOT NULL,
    ADD FOREIGN KEY (quota_key) REFERENCES upsert_kit_quotas (quota_key) ON DELETE CASCADE;

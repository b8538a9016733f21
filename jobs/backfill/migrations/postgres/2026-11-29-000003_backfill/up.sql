-- The backfill scheduler's work queue: one row per month to (re)compute, claimed with
-- FOR UPDATE SKIP LOCKED under a lease (upsert_kit::claim; the scheduler is src/lib.rs).
--   pending/retry: due when locked_until IS NULL or in the past (locked_until is then the
--                  "not before" of a retry's backoff);
--   processing:    claimed by holder until locked_until (the lease);
--   done/failed:   finished; failed means parked after the maximum number of attempts.
CREATE TABLE backfill_log (
    id BIGSERIAL PRIMARY KEY,
    year INTEGER NOT NULL CHECK (year BETWEEN 1 AND 9999),
    month INTEGER NOT NULL CHECK (month BETWEEN 1 AND 12),
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'retry', 'processing', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_until TIMESTAMPTZ,
    holder TEXT CHECK (length(holder) <= 200),
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (year, month),
    CHECK (status <> 'processing' OR (holder IS NOT NULL AND locked_until IS NOT NULL))
);

-- Due items, in claim order.
CREATE INDEX backfill_log_due ON backfill_log (id) WHERE status IN ('pending', 'retry');
-- Leases, for the reaper.
CREATE INDEX backfill_log_leases ON backfill_log (locked_until) WHERE status = 'processing';

-- Usage tracking: accounts with their limits, one row per account and month, an idempotency
-- ledger of increments, and quota reservations.
CREATE TABLE usage_accounts (
    account BIGINT PRIMARY KEY,
    tokens_limit BIGINT NOT NULL CHECK (tokens_limit >= 0),
    reports_limit BIGINT NOT NULL CHECK (reports_limit >= 0),
    chats_limit BIGINT NOT NULL CHECK (chats_limit >= 0),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- One row per account and period ([period_start, period_end), UTC). Limits are copied from
-- usage_accounts when the period is created. Reserved units count against the limit until they
-- are committed, released or expire.
CREATE TABLE usage_periods (
    id BIGSERIAL PRIMARY KEY,
    account BIGINT NOT NULL REFERENCES usage_accounts (account),
    period_start TIMESTAMP NOT NULL,
    period_end TIMESTAMP NOT NULL,
    tokens_used BIGINT NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    reports_used BIGINT NOT NULL DEFAULT 0 CHECK (reports_used >= 0),
    chats_used BIGINT NOT NULL DEFAULT 0 CHECK (chats_used >= 0),
    tokens_reserved BIGINT NOT NULL DEFAULT 0 CHECK (tokens_reserved >= 0),
    reports_reserved BIGINT NOT NULL DEFAULT 0 CHECK (reports_reserved >= 0),
    chats_reserved BIGINT NOT NULL DEFAULT 0 CHECK (chats_reserved >= 0),
    tokens_limit BIGINT NOT NULL CHECK (tokens_limit >= 0),
    reports_limit BIGINT NOT NULL CHECK (reports_limit >= 0),
    chats_limit BIGINT NOT NULL CHECK (chats_limit >= 0),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT usage_periods_account_period_start_key UNIQUE (account, period_start),
    CHECK (period_end > period_start)
);

-- The idempotency ledger: one row per applied increment, keyed per account. The totals are the
-- period's counters right after the increment: a replay returns them.
CREATE TABLE usage_events (
    id BIGSERIAL PRIMARY KEY,
    account BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    period_id BIGINT NOT NULL REFERENCES usage_periods (id) ON DELETE CASCADE,
    tokens BIGINT NOT NULL CHECK (tokens >= 0),
    reports BIGINT NOT NULL CHECK (reports >= 0),
    chats BIGINT NOT NULL CHECK (chats >= 0),
    request_hash BIGINT NOT NULL,
    tokens_total BIGINT NOT NULL DEFAULT 0,
    reports_total BIGINT NOT NULL DEFAULT 0,
    chats_total BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT usage_events_account_idempotency_key_key UNIQUE (account, idempotency_key)
);
CREATE INDEX usage_events_created_at_idx ON usage_events (created_at);

-- Quota reservations: counted in usage_periods.<metric>_reserved until committed, released or
-- expired (expires_at passed and swept).
CREATE TABLE usage_reservations (
    id BIGSERIAL PRIMARY KEY,
    period_id BIGINT NOT NULL REFERENCES usage_periods (id) ON DELETE CASCADE,
    account BIGINT NOT NULL,
    metric TEXT NOT NULL CHECK (metric IN ('tokens', 'reports', 'chats')),
    amount BIGINT NOT NULL CHECK (amount > 0),
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX usage_reservations_period_expires_idx ON usage_reservations (period_id, expires_at);
CREATE INDEX usage_reservations_expires_idx ON usage_reservations (expires_at);

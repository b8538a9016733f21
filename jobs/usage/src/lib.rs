//! Usage tracking on [`upsert_kit`]: the worked example of get-or-create, counters and quotas.
//!
//! One row per account and calendar month (`usage_periods`), with token, report and chat
//! counters, the units held by quota reservations, and the limits copied from the account
//! (`usage_accounts`). It answers three production reports: two requests creating the same
//! period (get-or-create), increments lost or counted twice (counters with idempotency keys),
//! and two requests both spending the last unit of quota (reservations).
//!
//! - [`set_usage_limits`] registers an account (or changes its limits);
//! - [`get_or_create_usage_period`] returns the period containing an instant;
//! - [`increment`](crate::counter::increment) counts usage once per idempotency key;
//! - [`reserve`](crate::quota::reserve), [`try_consume`](crate::quota::try_consume) and friends
//!   enforce the limits.
//!
//! The tables are this crate's own: apply [`PG_MIGRATIONS`] or [`SQLITE_MIGRATIONS`] (or call
//! [`run_migrations`]) first. Every function takes a [`UsageConnection`]: a `PgConnection`, a
//! `SqliteConnection`, or an r2d2 pooled connection of either. All instants are UTC
//! `NaiveDateTime`s. Errors are [`upsert_kit::Error`]s: ask them
//! [`is_retryable`](upsert_kit::Error::is_retryable) and
//! [`is_outcome_unknown`](upsert_kit::Error::is_outcome_unknown).
//!
//! [`naive`] keeps the racy patterns these functions replace, as baselines for the tests and
//! the race report. Never call them.
//!
//! # SQLite
//! SQLite admits one writer at a time: every write here runs in a `BEGIN IMMEDIATE`
//! transaction, which takes the write lock before the first read, so the read-decide-write
//! steps inside it cannot interleave with another writer, in this process or another one on
//! the same file. The guarantees of PostgreSQL therefore hold on SQLite too; writers queue
//! instead of running side by side (a writer that waits longer than the connection's busy
//! timeout gets [`Error::Busy`], retryable: nothing was applied).
//!
//! # Examples
//!
//! ```
//! use diesel::{Connection, SqliteConnection};
//! use usage_tracking::{counter, get_or_create_usage_period, quota, set_usage_limits, Metric, Usage};
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! usage_tracking::run_migrations(&mut conn)?;
//! let now = chrono::Utc::now().naive_utc();
//! set_usage_limits(&mut conn, 7, Usage { tokens: 1000, reports: 10, chats: 50 }, now)?;
//!
//! // Count what a request used, once, whatever retries deliver it again.
//! counter::increment(&mut conn, 7, "report-1", now, Usage { tokens: 300, reports: 1, chats: 0 })?;
//! counter::increment(&mut conn, 7, "report-1", now, Usage { tokens: 300, reports: 1, chats: 0 })?;
//! // Refuse work the limit cannot pay for.
//! let refused = quota::try_consume(&mut conn, 7, Metric::Tokens, 701, now);
//! assert!(matches!(refused, Err(upsert_kit::Error::QuotaExceeded { available: 700, .. })));
//!
//! let period = get_or_create_usage_period(&mut conn, 7, now)?.row;
//! assert_eq!((period.tokens_used, period.reports_used), (300, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod counter;
pub mod naive;
pub mod quota;
pub mod schema;

use crate::schema::{usage_accounts, usage_events, usage_periods, usage_reservations};
use chrono::{Datelike, NaiveDateTime};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::fmt;
use upsert_kit::{get_or_create, Error, Obtained, Result};

/// The PostgreSQL migrations of the usage tables (`usage_accounts`, `usage_periods`,
/// `usage_events`, `usage_reservations`), for `diesel_migrations` or [`run_migrations`].
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The SQLite migrations: the same tables, columns and constraints as [`PG_MIGRATIONS`], except
/// that the keys stay those of the first migration (PostgreSQL's second one makes every key
/// include the account, so that the tables can be distributed by it on Citus).
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Applies the pending migrations of the usage tables on `conn`'s backend ([`PG_MIGRATIONS`] or
/// [`SQLITE_MIGRATIONS`]); returns how many ran.
///
/// # Errors
/// [`Error::Migration`] when a migration fails (it is rolled back).
///
/// # Examples
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// assert_eq!(usage_tracking::run_migrations(&mut conn)?, 1);
/// assert_eq!(usage_tracking::run_migrations(&mut conn)?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_migrations<C: UsageConnection>(conn: &mut C) -> Result<usize> {
    conn.backend().migrate()
}

/// The largest amount one call may add, reserve or consume (10^15): far above any real
/// request, and small enough that counters cannot overflow `BIGINT` in practice.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Token, report and chat quantities: amounts to add, counters, or limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Tokens.
    pub tokens: i64,
    /// Reports.
    pub reports: i64,
    /// Chats.
    pub chats: i64,
}

impl Usage {
    /// `tokens` tokens, nothing else.
    pub fn tokens(tokens: i64) -> Self {
        Usage {
            tokens,
            ..Usage::default()
        }
    }

    /// The quantity of `metric`.
    pub fn get(&self, metric: Metric) -> i64 {
        match metric {
            Metric::Tokens => self.tokens,
            Metric::Reports => self.reports,
            Metric::Chats => self.chats,
        }
    }

    pub(crate) fn of(metric: Metric, amount: i64) -> Self {
        let mut usage = Usage::default();
        match metric {
            Metric::Tokens => usage.tokens = amount,
            Metric::Reports => usage.reports = amount,
            Metric::Chats => usage.chats = amount,
        }
        usage
    }

    fn fields(&self) -> [(&'static str, i64); 3] {
        [
            ("tokens", self.tokens),
            ("reports", self.reports),
            ("chats", self.chats),
        ]
    }
}

/// A counted quantity of a usage period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Tokens (`tokens_used`, `tokens_reserved`, `tokens_limit`).
    Tokens,
    /// Reports.
    Reports,
    /// Chats.
    Chats,
}

impl Metric {
    /// `"tokens"`, `"reports"` or `"chats"` (as stored in `usage_reservations.metric`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Tokens => "tokens",
            Metric::Reports => "reports",
            Metric::Chats => "chats",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "tokens" => Ok(Metric::Tokens),
            "reports" => Ok(Metric::Reports),
            "chats" => Ok(Metric::Chats),
            other => Err(Error::invalid(
                "metric",
                format!("unknown metric {other:?}"),
            )),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of `usage_periods`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = usage_periods)]
pub struct UsagePeriod {
    /// Surrogate key.
    pub id: i64,
    /// The account.
    pub account: i64,
    /// First instant of the period (inclusive).
    pub period_start: NaiveDateTime,
    /// End of the period (exclusive).
    pub period_end: NaiveDateTime,
    /// Tokens counted.
    pub tokens_used: i64,
    /// Reports counted.
    pub reports_used: i64,
    /// Chats counted.
    pub chats_used: i64,
    /// Tokens held by live reservations.
    pub tokens_reserved: i64,
    /// Reports held by live reservations.
    pub reports_reserved: i64,
    /// Chats held by live reservations.
    pub chats_reserved: i64,
    /// Tokens allowed.
    pub tokens_limit: i64,
    /// Reports allowed.
    pub reports_limit: i64,
    /// Chats allowed.
    pub chats_limit: i64,
    /// When the row was created.
    pub created_at: NaiveDateTime,
}

impl UsagePeriod {
    /// The counters.
    pub fn used(&self) -> Usage {
        Usage {
            tokens: self.tokens_used,
            reports: self.reports_used,
            chats: self.chats_used,
        }
    }

    /// The units held by live reservations.
    pub fn reserved(&self) -> Usage {
        Usage {
            tokens: self.tokens_reserved,
            reports: self.reports_reserved,
            chats: self.chats_reserved,
        }
    }

    /// The limits.
    pub fn limits(&self) -> Usage {
        Usage {
            tokens: self.tokens_limit,
            reports: self.reports_limit,
            chats: self.chats_limit,
        }
    }

    /// Units of `metric` that can still be reserved or consumed: `limit - used - reserved`,
    /// never below zero.
    pub fn available(&self, metric: Metric) -> i64 {
        (self.limits().get(metric) - self.used().get(metric) - self.reserved().get(metric)).max(0)
    }
}

/// The rows the statements read and write (public names in a private module).
pub(crate) mod rows {
    use super::*;

    /// A new month of an account (get-or-create: never overwritten).
    #[derive(Debug, Insertable, upsert_kit::UpsertModel)]
    #[diesel(table_name = usage_periods)]
    #[upsert(key(account, period_start))]
    pub struct NewUsagePeriod {
        pub account: i64,
        pub period_start: NaiveDateTime,
        pub period_end: NaiveDateTime,
        pub tokens_limit: i64,
        pub reports_limit: i64,
        pub chats_limit: i64,
        pub created_at: NaiveDateTime,
    }

    /// An account's limits (upserted when they change).
    #[derive(Debug, Insertable, upsert_kit::UpsertModel)]
    #[diesel(table_name = usage_accounts)]
    #[upsert(key(account))]
    pub struct UsageAccountRow {
        pub account: i64,
        pub tokens_limit: i64,
        pub reports_limit: i64,
        pub chats_limit: i64,
        pub updated_at: NaiveDateTime,
    }

    /// A new row of the idempotency ledger.
    #[derive(Debug, Insertable)]
    #[diesel(table_name = usage_events)]
    pub struct NewUsageEvent<'a> {
        pub account: i64,
        pub idempotency_key: &'a str,
        pub period_id: i64,
        pub tokens: i64,
        pub reports: i64,
        pub chats: i64,
        pub request_hash: i64,
        pub created_at: NaiveDateTime,
    }

    /// A row of the idempotency ledger.
    #[derive(Debug, Clone, Queryable, Selectable)]
    #[diesel(table_name = usage_events)]
    pub struct UsageEvent {
        pub id: i64,
        pub period_id: i64,
        pub tokens: i64,
        pub reports: i64,
        pub chats: i64,
        pub request_hash: i64,
        pub tokens_total: i64,
        pub reports_total: i64,
        pub chats_total: i64,
    }

    /// A new quota reservation.
    #[derive(Debug, Insertable)]
    #[diesel(table_name = usage_reservations)]
    pub struct NewReservation<'a> {
        pub period_id: i64,
        pub account: i64,
        pub metric: &'a str,
        pub amount: i64,
        pub expires_at: NaiveDateTime,
        pub created_at: NaiveDateTime,
    }

    /// A row of `usage_reservations`.
    #[derive(Debug, Clone, Queryable, Selectable)]
    #[diesel(table_name = usage_reservations)]
    pub struct ReservationRow {
        pub id: i64,
        pub account: i64,
        pub period_id: i64,
        pub metric: String,
        pub amount: i64,
    }
}

pub(crate) use rows::*;

/// Connections the usage functions run on: [`PgConnection`], [`SqliteConnection`], and r2d2
/// pooled connections of either.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a connection the usage functions can use",
    note = "pass `&mut PgConnection`, `&mut SqliteConnection` or a pooled connection of either"
)]
pub trait UsageConnection {
    /// The connection the statements run on.
    #[doc(hidden)]
    type Backend: sealed::Backend;
    /// The connection the statements run on.
    #[doc(hidden)]
    fn backend(&mut self) -> &mut Self::Backend;
}

impl UsageConnection for PgConnection {
    type Backend = PgConnection;
    fn backend(&mut self) -> &mut PgConnection {
        self
    }
}

impl UsageConnection for SqliteConnection {
    type Backend = SqliteConnection;
    fn backend(&mut self) -> &mut SqliteConnection {
        self
    }
}

impl<C> UsageConnection for PooledConnection<ConnectionManager<C>>
where
    C: sealed::Backend + diesel::r2d2::R2D2Connection + 'static,
{
    type Backend = C;
    fn backend(&mut self) -> &mut C {
        self
    }
}

/// The statements of the usage functions, written once and compiled for each backend.
pub(crate) mod sealed {
    use super::*;
    use diesel::pg::Pg;
    use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
    use diesel::sql_types::{BigInt, Text, Timestamp};
    use diesel::QueryResult;

    /// The write transaction and the migrations of a backend.
    pub trait WriteTx: Sized {
        /// Runs `f` in a transaction that holds the write lock where the backend has one
        /// (SQLite: `BEGIN IMMEDIATE`); a savepoint when a transaction is open.
        fn write_tx<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>;
        /// Applies the backend's pending migrations of the usage tables.
        fn migrate(&mut self) -> Result<usize>;
    }

    /// The migrations' error, as the crate's.
    fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> Error {
        Error::Migration(e.to_string())
    }

    impl WriteTx for PgConnection {
        fn write_tx<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
            upsert_kit::transaction(self, f)
        }

        fn migrate(&mut self) -> Result<usize> {
            self.run_pending_migrations(PG_MIGRATIONS)
                .map(|ran| ran.len())
                .map_err(migration_error)
        }
    }

    impl WriteTx for SqliteConnection {
        fn write_tx<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
            upsert_kit::tx::immediate_transaction(self, f)
        }

        fn migrate(&mut self) -> Result<usize> {
            self.run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|ran| ran.len())
                .map_err(migration_error)
        }
    }

    /// A keyed increment as [`ApplyKeyed::apply_keyed`] takes it: the ledger row's fields,
    /// with the period named by its start (the statement finds its row).
    #[derive(Debug, Clone, Copy)]
    pub struct KeyedRequest<'a> {
        pub account: i64,
        pub idempotency_key: &'a str,
        /// The period's first instant ([`crate::monthly_period`]).
        pub period_start: NaiveDateTime,
        pub amounts: Usage,
        pub request_hash: i64,
        pub created_at: NaiveDateTime,
    }

    /// What [`ApplyKeyed::apply_keyed`] did.
    #[derive(Debug)]
    pub enum Keyed {
        /// The key was new: the amounts were added; the ledger row, its period and the totals
        /// after.
        Applied {
            event_id: i64,
            period_id: i64,
            totals: Usage,
        },
        /// The key is in the ledger already (committed by another call): nothing was changed.
        /// On PostgreSQL this is decided from the statement's unique violation (SQLSTATE
        /// 23505, whatever the constraint's or index's name, which Citus changes or drops);
        /// the violation is carried along, to be reported if the ledger then has no row for
        /// the key (the violation was another unique index's).
        KeyTaken { violation: Option<Error> },
        /// The account has no row for the period (its first use, or the row was deleted):
        /// nothing was changed.
        NoPeriod,
    }

    /// The keyed increment: ledger row and counter change, atomically.
    pub trait ApplyKeyed {
        /// Adds the request's amounts to its account's period starting at `period_start` and
        /// records the event with the totals after, unless its key is in the ledger or the
        /// period row does not exist.
        fn apply_keyed(&mut self, request: &KeyedRequest<'_>) -> Result<Keyed>;
    }

    /// The PostgreSQL keyed increment, one statement and one round trip: the counter update
    /// of the period found by its natural key `(account, period_start)` (the unique index),
    /// then the ledger insert fed by its `RETURNING`:
    ///
    /// ```sql
    /// WITH up AS (UPDATE usage_periods SET tokens_used = tokens_used + $1, …
    ///             WHERE account = $4 AND period_start = $5
    ///             RETURNING id, tokens_used, reports_used, chats_used)
    /// INSERT INTO usage_events (account, idempotency_key, period_id, tokens, …, created_at)
    /// SELECT $6, $7, up.id, $8, …, up.tokens_used, …, $13 FROM up
    /// RETURNING id, period_id, tokens_total, reports_total, chats_total
    /// ```
    ///
    /// When the key exists the insert raises a unique violation and the whole statement,
    /// counter update included, is undone; when the period row does not exist nothing is
    /// updated and nothing inserted (no row comes back). The period row is locked first, then
    /// the key's index entry, by every increment: no deadlock between increments.
    ///
    /// A query fragment of its own rather than `diesel::sql_query`, which Diesel never keeps
    /// prepared: the text is fixed, so each connection prepares it once.
    struct PgKeyedIncrement<'a>(&'a KeyedRequest<'a>);

    /// What [`PgKeyedIncrement`] returns: the ledger row's id, its period's id, the totals.
    type KeyedRow = (i64, i64, i64, i64, i64);

    impl QueryId for PgKeyedIncrement<'_> {
        type QueryId = PgKeyedIncrement<'static>;
        const HAS_STATIC_QUERY_ID: bool = true;
    }

    impl Query for PgKeyedIncrement<'_> {
        type SqlType = (BigInt, BigInt, BigInt, BigInt, BigInt);
    }

    impl RunQueryDsl<PgConnection> for PgKeyedIncrement<'_> {}

    impl QueryFragment<Pg> for PgKeyedIncrement<'_> {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
            let r = self.0;
            let d = &r.amounts;
            out.push_sql("WITH up AS (UPDATE usage_periods SET tokens_used = tokens_used + ");
            out.push_bind_param::<BigInt, _>(&d.tokens)?;
            out.push_sql(", reports_used = reports_used + ");
            out.push_bind_param::<BigInt, _>(&d.reports)?;
            out.push_sql(", chats_used = chats_used + ");
            out.push_bind_param::<BigInt, _>(&d.chats)?;
            out.push_sql(" WHERE account = ");
            out.push_bind_param::<BigInt, _>(&r.account)?;
            out.push_sql(" AND period_start = ");
            out.push_bind_param::<Timestamp, _>(&r.period_start)?;
            out.push_sql(
                " RETURNING id, tokens_used, reports_used, chats_used) \
                 INSERT INTO usage_events (account, idempotency_key, period_id, tokens, reports, \
                 chats, request_hash, tokens_total, reports_total, chats_total, created_at) \
                 SELECT ",
            );
            out.push_bind_param::<BigInt, _>(&r.account)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&r.idempotency_key)?;
            out.push_sql(", up.id, ");
            out.push_bind_param::<BigInt, _>(&d.tokens)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&d.reports)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&d.chats)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&r.request_hash)?;
            out.push_sql(", up.tokens_used, up.reports_used, up.chats_used, ");
            out.push_bind_param::<Timestamp, _>(&r.created_at)?;
            out.push_sql(
                " FROM up RETURNING id, period_id, tokens_total, reports_total, chats_total",
            );
            Ok(())
        }
    }

    impl ApplyKeyed for PgConnection {
        fn apply_keyed(&mut self, request: &KeyedRequest<'_>) -> Result<Keyed> {
            let in_tx = upsert_kit::tx::in_transaction(self);
            let statement = |conn: &mut PgConnection| -> Result<Vec<KeyedRow>> {
                PgKeyedIncrement(request)
                    .load(conn)
                    .map_err(|e| upsert_kit::tx::statement_error(in_tx, e))
            };
            // Alone, the statement is its own transaction (one round trip). Inside the
            // caller's transaction a savepoint keeps a unique violation from aborting it.
            let result = if in_tx {
                upsert_kit::transaction(self, statement)
            } else {
                statement(self)
            };
            match result {
                Ok(rows) => Ok(match rows.into_iter().next() {
                    Some((event_id, period_id, tokens, reports, chats)) => Keyed::Applied {
                        event_id,
                        period_id,
                        totals: Usage {
                            tokens,
                            reports,
                            chats,
                        },
                    },
                    None => Keyed::NoPeriod,
                }),
                // The statement inserts one ledger row: a unique violation means its key (or,
                // rarely, another unique index of the ledger) is taken. The caller reads the
                // key to tell; no constraint name is looked at (on Citus it carries a shard
                // suffix, or is missing when the violation comes from another node).
                Err(
                    e @ Error::Constraint {
                        kind: upsert_kit::ConstraintKind::Unique,
                        ..
                    },
                ) => Ok(Keyed::KeyTaken { violation: Some(e) }),
                Err(e) => Err(e),
            }
        }
    }

    impl ApplyKeyed for SqliteConnection {
        fn apply_keyed(&mut self, request: &KeyedRequest<'_>) -> Result<Keyed> {
            // One writer at a time: find the period, claim the key, then count, in one
            // immediate transaction.
            upsert_kit::tx::immediate_transaction(self, |conn| {
                let Some(period) = conn.find_period(request.account, request.period_start)? else {
                    return Ok(Keyed::NoPeriod);
                };
                let d = request.amounts;
                let event = NewUsageEvent {
                    account: request.account,
                    idempotency_key: request.idempotency_key,
                    period_id: period.id,
                    tokens: d.tokens,
                    reports: d.reports,
                    chats: d.chats,
                    request_hash: request.request_hash,
                    created_at: request.created_at,
                };
                match conn.insert_event(&event)? {
                    Some(event_id) => Ok(Keyed::Applied {
                        event_id,
                        period_id: period.id,
                        totals: conn.apply_increment(request.account, period.id, event_id, d)?,
                    }),
                    None => Ok(Keyed::KeyTaken { violation: None }),
                }
            })
        }
    }

    /// A reservation as [`QuotaStep::reserve_one`] takes it: the period named by its start (the
    /// statement finds its row).
    #[derive(Debug, Clone, Copy)]
    pub struct ReserveAt {
        pub account: i64,
        /// The period's first instant ([`crate::monthly_period`]).
        pub period_start: NaiveDateTime,
        pub metric: Metric,
        pub amount: i64,
        pub expires_at: NaiveDateTime,
        pub created_at: NaiveDateTime,
    }

    /// The quota statements that change a period and (for a reservation) insert a row, as one
    /// atomic step. Each finds the period by `(account, period_start)`, so that an accepted
    /// call is one round trip on PostgreSQL; `None` when refused or when the period row does
    /// not exist.
    pub trait QuotaStep {
        /// `reserved += amount` if `used + reserved + amount <= limit`, and the reservation's
        /// insert, atomically: the reservation's id and its period's.
        fn reserve_one(&mut self, new: &ReserveAt) -> Result<Option<(i64, i64)>>;
        /// `used += amount` if `used + reserved + amount <= limit`: the period after.
        fn consume_one(
            &mut self,
            account: i64,
            period_start: NaiveDateTime,
            metric: Metric,
            amount: i64,
        ) -> Result<Option<UsagePeriod>>;
    }

    /// The PostgreSQL reservation, one statement: the conditional update of the period feeds
    /// the reservation's insert, so both happen or neither.
    ///
    /// ```sql
    /// WITH up AS (UPDATE usage_periods SET m_reserved = m_reserved + $1
    ///             WHERE account = $2 AND period_start = $3 AND m_used + m_reserved + $4 <= m_limit
    ///             RETURNING id)
    /// INSERT INTO usage_reservations (period_id, account, metric, amount, expires_at, created_at)
    /// SELECT up.id, $5, $6, $7, $8, $9 FROM up RETURNING id, period_id
    /// ```
    ///
    /// `m` is the metric's column prefix, a fixed identifier: one text per metric, each
    /// prepared once per connection (a query fragment, not `diesel::sql_query`, which Diesel
    /// never keeps prepared).
    struct PgReserve<'a>(&'a ReserveAt);

    impl QueryId for PgReserve<'_> {
        type QueryId = ();
        const HAS_STATIC_QUERY_ID: bool = false;
    }

    impl Query for PgReserve<'_> {
        type SqlType = (BigInt, BigInt);
    }

    impl RunQueryDsl<PgConnection> for PgReserve<'_> {}

    impl QueryFragment<Pg> for PgReserve<'_> {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
            let (n, m) = (self.0, self.0.metric.as_str());
            out.push_sql("WITH up AS (UPDATE usage_periods SET ");
            out.push_sql(m);
            out.push_sql("_reserved = ");
            out.push_sql(m);
            out.push_sql("_reserved + ");
            out.push_bind_param::<BigInt, _>(&n.amount)?;
            out.push_sql(" WHERE account = ");
            out.push_bind_param::<BigInt, _>(&n.account)?;
            out.push_sql(" AND period_start = ");
            out.push_bind_param::<Timestamp, _>(&n.period_start)?;
            for part in [" AND ", m, "_used + ", m, "_reserved + "] {
                out.push_sql(part);
            }
            out.push_bind_param::<BigInt, _>(&n.amount)?;
            for part in [" <= ", m, "_limit RETURNING id) "] {
                out.push_sql(part);
            }
            out.push_sql(
                "INSERT INTO usage_reservations \
                 (period_id, account, metric, amount, expires_at, created_at) SELECT up.id, ",
            );
            out.push_bind_param::<BigInt, _>(&n.account)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(n.metric.as_str())?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&n.amount)?;
            out.push_sql(", ");
            out.push_bind_param::<Timestamp, _>(&n.expires_at)?;
            out.push_sql(", ");
            out.push_bind_param::<Timestamp, _>(&n.created_at)?;
            out.push_sql(" FROM up RETURNING id, period_id");
            Ok(())
        }
    }

    /// A statement's result, with a lost connection reported as an unknown outcome when the
    /// statement was its own transaction (`in_tx` read before it ran).
    fn alone<T>(in_tx: bool, result: Result<T>) -> Result<T> {
        if in_tx {
            result
        } else {
            result.map_err(Error::at_commit)
        }
    }

    impl QuotaStep for PgConnection {
        fn reserve_one(&mut self, new: &ReserveAt) -> Result<Option<(i64, i64)>> {
            let in_tx = upsert_kit::tx::in_transaction(self);
            let rows: Vec<(i64, i64)> = PgReserve(new)
                .load(self)
                .map_err(|e| upsert_kit::tx::statement_error(in_tx, e))?;
            Ok(rows.first().copied())
        }

        fn consume_one(
            &mut self,
            account: i64,
            period_start: NaiveDateTime,
            metric: Metric,
            amount: i64,
        ) -> Result<Option<UsagePeriod>> {
            let in_tx = upsert_kit::tx::in_transaction(self);
            alone(
                in_tx,
                self.consume_room(account, period_start, metric, amount),
            )
        }
    }

    impl QuotaStep for SqliteConnection {
        fn reserve_one(&mut self, new: &ReserveAt) -> Result<Option<(i64, i64)>> {
            upsert_kit::tx::immediate_transaction(self, |c| {
                let room = c.reserve_room(new.account, new.period_start, new.metric, new.amount)?;
                let Some(period) = room else {
                    return Ok(None);
                };
                let id = c.insert_reservation(&NewReservation {
                    period_id: period.id,
                    account: new.account,
                    metric: new.metric.as_str(),
                    amount: new.amount,
                    expires_at: new.expires_at,
                    created_at: new.created_at,
                })?;
                Ok(Some((id, period.id)))
            })
        }

        fn consume_one(
            &mut self,
            account: i64,
            period_start: NaiveDateTime,
            metric: Metric,
            amount: i64,
        ) -> Result<Option<UsagePeriod>> {
            // One statement: atomic on its own, under SQLite's write lock.
            self.consume_room(account, period_start, metric, amount)
        }
    }

    /// `$used`, `$reserved` and `$limit` bound to `metric`'s columns inside `$body`.
    macro_rules! with_metric {
        ($metric:expr, |$used:ident, $reserved:ident, $limit:ident| $body:expr) => {
            match $metric {
                Metric::Tokens => {
                    use usage_periods::{
                        tokens_limit as $limit, tokens_reserved as $reserved, tokens_used as $used,
                    };
                    $body
                }
                Metric::Reports => {
                    use usage_periods::{
                        reports_limit as $limit, reports_reserved as $reserved,
                        reports_used as $used,
                    };
                    $body
                }
                Metric::Chats => {
                    use usage_periods::{
                        chats_limit as $limit, chats_reserved as $reserved, chats_used as $used,
                    };
                    $body
                }
            }
        };
    }

    macro_rules! backend {
        ($($conn:ty),+) => { $(
            impl Backend for $conn {
                fn find_period(&mut self, account: i64, start: NaiveDateTime) -> Result<Option<UsagePeriod>> {
                    Ok(usage_periods::table
                        .filter(usage_periods::account.eq(account))
                        .filter(usage_periods::period_start.eq(start))
                        .select(UsagePeriod::as_select())
                        .first(self)
                        .optional()?)
                }

                fn period_by_id(&mut self, account: i64, id: i64) -> Result<UsagePeriod> {
                    Ok(usage_periods::table
                        .filter(usage_periods::account.eq(account))
                        .filter(usage_periods::id.eq(id))
                        .select(UsagePeriod::as_select())
                        .first(self)?)
                }

                fn account_limits(&mut self, account: i64) -> Result<Option<Usage>> {
                    let limits: Option<(i64, i64, i64)> = usage_accounts::table
                        .find(account)
                        .select((
                            usage_accounts::tokens_limit,
                            usage_accounts::reports_limit,
                            usage_accounts::chats_limit,
                        ))
                        .first(self)
                        .optional()?;
                    Ok(limits.map(|(tokens, reports, chats)| Usage { tokens, reports, chats }))
                }

                fn create_period(&mut self, new: &NewUsagePeriod) -> Result<Obtained<UsagePeriod>> {
                    get_or_create(self, new)
                }

                fn upsert_account(&mut self, row: &UsageAccountRow) -> Result<()> {
                    upsert_kit::atomic_upsert(self, row)?;
                    Ok(())
                }

                fn set_open_period_limits(&mut self, account: i64, limits: Usage, at: NaiveDateTime) -> Result<usize> {
                    Ok(diesel::update(
                        usage_periods::table
                            .filter(usage_periods::account.eq(account))
                            .filter(usage_periods::period_end.gt(at)),
                    )
                    .set((
                        usage_periods::tokens_limit.eq(limits.tokens),
                        usage_periods::reports_limit.eq(limits.reports),
                        usage_periods::chats_limit.eq(limits.chats),
                    ))
                    .execute(self)?)
                }

                fn insert_event(&mut self, event: &NewUsageEvent<'_>) -> Result<Option<i64>> {
                    Ok(diesel::insert_into(usage_events::table)
                        .values(event)
                        .on_conflict((usage_events::account, usage_events::idempotency_key))
                        .do_nothing()
                        .returning(usage_events::id)
                        .get_result(self)
                        .optional()?)
                }

                fn find_event(&mut self, account: i64, key: &str) -> Result<Option<UsageEvent>> {
                    Ok(usage_events::table
                        .filter(usage_events::account.eq(account))
                        .filter(usage_events::idempotency_key.eq(key))
                        .select(UsageEvent::as_select())
                        .first(self)
                        .optional()?)
                }

                fn apply_increment(&mut self, account: i64, period_id: i64, event_id: i64, d: Usage) -> Result<Usage> {
                    // The library's generic counter on this crate's period table.
                    let [tokens, reports, chats] = upsert_kit::counter::increment::<PeriodCounters, _>(
                        self,
                        &(account, period_id),
                        [d.tokens, d.reports, d.chats],
                    )?
                    .ok_or_else(|| Error::NotFound(format!("usage period {period_id}")))?;
                    diesel::update(
                        usage_events::table
                            .filter(usage_events::account.eq(account))
                            .filter(usage_events::id.eq(event_id)),
                    )
                        .set((
                            usage_events::tokens_total.eq(tokens),
                            usage_events::reports_total.eq(reports),
                            usage_events::chats_total.eq(chats),
                        ))
                        .execute(self)?;
                    Ok(Usage { tokens, reports, chats })
                }

                fn prune_events(&mut self, older_than: NaiveDateTime) -> Result<usize> {
                    Ok(diesel::delete(usage_events::table.filter(usage_events::created_at.lt(older_than)))
                        .execute(self)?)
                }

                fn reserve_room(&mut self, account: i64, period_start: NaiveDateTime, metric: Metric, amount: i64) -> Result<Option<UsagePeriod>> {
                    Ok(with_metric!(metric, |used, reserved, limit| {
                        diesel::update(
                            usage_periods::table
                                .filter(usage_periods::account.eq(account))
                                .filter(usage_periods::period_start.eq(period_start))
                                .filter((used + reserved + amount).le(limit)),
                        )
                        .set(reserved.eq(reserved + amount))
                        .returning(UsagePeriod::as_returning())
                        .get_result(self)
                        .optional()?
                    }))
                }

                fn consume_room(&mut self, account: i64, period_start: NaiveDateTime, metric: Metric, amount: i64) -> Result<Option<UsagePeriod>> {
                    Ok(with_metric!(metric, |used, reserved, limit| {
                        diesel::update(
                            usage_periods::table
                                .filter(usage_periods::account.eq(account))
                                .filter(usage_periods::period_start.eq(period_start))
                                .filter((used + reserved + amount).le(limit)),
                        )
                        .set(used.eq(used + amount))
                        .returning(UsagePeriod::as_returning())
                        .get_result(self)
                        .optional()?
                    }))
                }

                fn insert_reservation(&mut self, new: &NewReservation<'_>) -> Result<i64> {
                    Ok(diesel::insert_into(usage_reservations::table)
                        .values(new)
                        .returning(usage_reservations::id)
                        .get_result(self)?)
                }

                fn take_reservation(&mut self, account: i64, id: i64, live_at: Option<NaiveDateTime>) -> Result<Option<ReservationRow>> {
                    let this = usage_reservations::table
                        .filter(usage_reservations::account.eq(account))
                        .filter(usage_reservations::id.eq(id));
                    let row = match live_at {
                        Some(at) => diesel::delete(this.filter(usage_reservations::expires_at.gt(at)))
                            .returning(ReservationRow::as_returning())
                            .get_result(self)
                            .optional()?,
                        None => diesel::delete(this)
                            .returning(ReservationRow::as_returning())
                            .get_result(self)
                            .optional()?,
                    };
                    Ok(row)
                }

                fn take_expired(&mut self, period: Option<(i64, i64)>, at: NaiveDateTime) -> Result<Vec<ReservationRow>> {
                    // One period's sweep is routed by its account; the sweep of every account
                    // (a cron job's) reads and deletes across accounts.
                    let expired = usage_reservations::table
                        .filter(usage_reservations::expires_at.le(at))
                        .into_boxed();
                    let expired = match period {
                        Some((account, p)) => expired
                            .filter(usage_reservations::account.eq(account))
                            .filter(usage_reservations::period_id.eq(p)),
                        None => expired,
                    };
                    let ids: Vec<i64> = expired.select(usage_reservations::id).load(self)?;
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    // Re-checked by the delete: a reservation settled meanwhile is not returned.
                    let gone = usage_reservations::table
                        .filter(usage_reservations::id.eq_any(&ids))
                        .filter(usage_reservations::expires_at.le(at));
                    Ok(match period {
                        Some((account, _)) => diesel::delete(gone.filter(usage_reservations::account.eq(account)))
                            .returning(ReservationRow::as_returning())
                            .load(self)?,
                        None => diesel::delete(gone)
                            .returning(ReservationRow::as_returning())
                            .load(self)?,
                    })
                }

                fn settle(&mut self, account_id: i64, period_id: i64, unreserve: Usage, add_used: Usage) -> Result<UsagePeriod> {
                    use usage_periods::*;
                    Ok(diesel::update(
                        usage_periods::table
                            .filter(account.eq(account_id))
                            .filter(id.eq(period_id)),
                    )
                        .set((
                            tokens_reserved.eq(tokens_reserved - unreserve.tokens),
                            reports_reserved.eq(reports_reserved - unreserve.reports),
                            chats_reserved.eq(chats_reserved - unreserve.chats),
                            tokens_used.eq(tokens_used + add_used.tokens),
                            reports_used.eq(reports_used + add_used.reports),
                            chats_used.eq(chats_used + add_used.chats),
                        ))
                        .returning(UsagePeriod::as_returning())
                        .get_result(self)?)
                }
            }
        )+ };
    }

    /// The statements, one method each; see the callers for the transactions around them.
    pub trait Backend: WriteTx + ApplyKeyed + QuotaStep {
        fn find_period(
            &mut self,
            account: i64,
            start: NaiveDateTime,
        ) -> Result<Option<UsagePeriod>>;
        /// The period `id` of `account` (every statement names the account: the key a
        /// distributed table is routed by).
        fn period_by_id(&mut self, account: i64, id: i64) -> Result<UsagePeriod>;
        fn account_limits(&mut self, account: i64) -> Result<Option<Usage>>;
        fn create_period(&mut self, new: &NewUsagePeriod) -> Result<Obtained<UsagePeriod>>;
        fn upsert_account(&mut self, row: &UsageAccountRow) -> Result<()>;
        fn set_open_period_limits(
            &mut self,
            account: i64,
            limits: Usage,
            at: NaiveDateTime,
        ) -> Result<usize>;
        /// `INSERT … ON CONFLICT (account, idempotency_key) DO NOTHING RETURNING id`.
        fn insert_event(&mut self, event: &NewUsageEvent<'_>) -> Result<Option<i64>>;
        fn find_event(&mut self, account: i64, key: &str) -> Result<Option<UsageEvent>>;
        /// `UPDATE usage_periods SET n = n + d … RETURNING`, then the totals into the event.
        fn apply_increment(
            &mut self,
            account: i64,
            period_id: i64,
            event_id: i64,
            d: Usage,
        ) -> Result<Usage>;
        fn prune_events(&mut self, older_than: NaiveDateTime) -> Result<usize>;
        /// `UPDATE … SET reserved = reserved + n WHERE used + reserved + n <= limit RETURNING *`.
        fn reserve_room(
            &mut self,
            account: i64,
            period_start: NaiveDateTime,
            metric: Metric,
            amount: i64,
        ) -> Result<Option<UsagePeriod>>;
        /// `UPDATE … SET used = used + n WHERE used + reserved + n <= limit RETURNING *`.
        fn consume_room(
            &mut self,
            account: i64,
            period_start: NaiveDateTime,
            metric: Metric,
            amount: i64,
        ) -> Result<Option<UsagePeriod>>;
        fn insert_reservation(&mut self, new: &NewReservation<'_>) -> Result<i64>;
        /// `DELETE … WHERE account = $1 AND id = $2 [AND expires_at > $3] RETURNING`.
        fn take_reservation(
            &mut self,
            account: i64,
            id: i64,
            live_at: Option<NaiveDateTime>,
        ) -> Result<Option<ReservationRow>>;
        /// Deletes the expired reservations (of one period, `(account, period id)`) and
        /// returns them.
        fn take_expired(
            &mut self,
            period: Option<(i64, i64)>,
            at: NaiveDateTime,
        ) -> Result<Vec<ReservationRow>>;
        /// Moves units out of `reserved` and into `used`.
        fn settle(
            &mut self,
            account: i64,
            period_id: i64,
            unreserve: Usage,
            add_used: Usage,
        ) -> Result<UsagePeriod>;
    }

    backend!(PgConnection, SqliteConnection);
}

pub(crate) use sealed::{ApplyKeyed, Backend, Keyed, KeyedRequest, QuotaStep, ReserveAt, WriteTx};

/// Checks a caller's instant (years 1 to 9999, the range both backends store).
pub(crate) fn check_instant(field: &str, at: NaiveDateTime) -> Result<()> {
    if (1..=9999).contains(&at.year()) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("timestamp {at} is out of range (years 1 to 9999)"),
        ))
    }
}

/// Checks an amount to add, reserve or consume: `0..=MAX_AMOUNT`, and above 0 unless
/// `zero_ok`.
pub(crate) fn check_amount(field: &str, amount: i64, zero_ok: bool) -> Result<()> {
    if amount < 0 || (amount == 0 && !zero_ok) {
        let bound = if zero_ok { "0 or more" } else { "above 0" };
        return Err(Error::invalid(
            field,
            format!("{amount} is not allowed: amounts must be {bound}"),
        ));
    }
    if amount > MAX_AMOUNT {
        return Err(Error::invalid(
            field,
            format!("{amount} is above the largest amount, {MAX_AMOUNT}"),
        ));
    }
    Ok(())
}

upsert_kit::counter! {
    table = usage_periods, key = (account: i64, id: i64), amounts = (tokens_used, reports_used, chats_used);
    /// The usage counters of a period row, declared for [`upsert_kit::counter`].
    #[derive(Debug, Clone, Copy)]
    pub struct PeriodCounters;
}

/// The calendar month (UTC) containing `at`: `[first day 00:00, first day of the next month)`.
///
/// # Errors
/// [`Error::InvalidInput`] when `at` is outside years 1 to 9999 or in December 9999 (the
/// period's end would be out of range).
///
/// # Examples
///
/// ```
/// use chrono::NaiveDate;
/// let at = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap().and_hms_opt(23, 59, 59).unwrap();
/// let (start, end) = usage_tracking::monthly_period(at)?;
/// assert_eq!(start, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap().and_hms_opt(0, 0, 0).unwrap());
/// assert_eq!(end, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap());
/// # Ok::<(), upsert_kit::Error>(())
/// ```
pub fn monthly_period(at: NaiveDateTime) -> Result<(NaiveDateTime, NaiveDateTime)> {
    check_instant("at", at)?;
    // The library's calendar windows; this crate only adds its own range (years 1 to 9999).
    let (start, end) = upsert_kit::period::Window::Month.bounds(at)?;
    if end.year() > 9999 {
        return Err(Error::invalid(
            "at",
            format!("the month of {at} ends outside years 1 to 9999"),
        ));
    }
    Ok((start, end))
}

/// Registers `account` with its per-period `limits`, or changes them. The new limits apply
/// to the account's current and future periods (periods whose end is after `at`); past
/// periods keep theirs. Lowering a limit below what is used already is allowed: nothing more
/// can then be reserved or consumed in that period.
///
/// **Guarantee**: one transaction: an upsert of `usage_accounts` and one `UPDATE` of the open
/// periods; concurrent calls leave the limits of one of them, never a mix.
/// **Cost**: PostgreSQL, four round trips (`BEGIN`, two statements, `COMMIT`).
///
/// # Errors
/// [`Error::InvalidInput`] when a limit is negative or above [`MAX_AMOUNT`], or `at` is out of
/// range; nothing is written.
///
/// # Examples
///
/// ```
/// use diesel::{Connection, SqliteConnection};
/// use usage_tracking::{get_or_create_usage_period, set_usage_limits, Usage};
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// usage_tracking::run_migrations(&mut conn)?;
/// let now = chrono::Utc::now().naive_utc();
/// set_usage_limits(&mut conn, 7, Usage { tokens: 1000, reports: 10, chats: 50 }, now)?;
/// let period = get_or_create_usage_period(&mut conn, 7, now)?;
/// assert_eq!(period.row.tokens_limit, 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_usage_limits<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    limits: Usage,
    at: NaiveDateTime,
) -> Result<()> {
    for (name, limit) in limits.fields() {
        check_amount(&format!("limits.{name}"), limit, true)?;
    }
    check_instant("at", at)?;
    let row = UsageAccountRow {
        account,
        tokens_limit: limits.tokens,
        reports_limit: limits.reports,
        chats_limit: limits.chats,
        updated_at: chrono::Utc::now().naive_utc(),
    };
    conn.backend().write_tx(|b| {
        b.upsert_account(&row)?;
        b.set_open_period_limits(account, limits, at)?;
        Ok(())
    })
}

/// Returns `account`'s usage period containing `at` (its calendar month, UTC, see
/// [`monthly_period`]), creating it with the account's current limits when it does not exist;
/// `created` says whether this call created it.
///
/// **Guarantee**: concurrent calls for one account and month return the same row and exactly
/// one reports `created` (the unique index on `(account, period_start)` decides; see
/// [`upsert_kit::get_or_create`](mod@upsert_kit::get_or_create)).
/// **Cost**: one round trip when the period exists (a `SELECT`, the common case, which does not
/// consume a sequence value); on first use of a month, the account's limits are read and the
/// period is created with `get_or_create` (two or three more). No transaction of its own: inside
/// the caller's it runs in it. READ COMMITTED is assumed; under REPEATABLE READ a concurrent
/// creation can surface as [`Error::SerializationFailure`].
///
/// # Errors
/// - [`Error::InvalidInput`] when `at` is out of range.
/// - [`Error::NotFound`] when `account` was never registered with [`set_usage_limits`]; nothing
///   is written.
///
/// # Examples
/// See [`set_usage_limits`].
pub fn get_or_create_usage_period<C: UsageConnection>(
    conn: &mut C,
    account: i64,
    at: NaiveDateTime,
) -> Result<Obtained<UsagePeriod>> {
    period_for(conn.backend(), account, at)
}

pub(crate) fn period_for<B: Backend>(
    b: &mut B,
    account: i64,
    at: NaiveDateTime,
) -> Result<Obtained<UsagePeriod>> {
    let (start, _) = monthly_period(at)?;
    if let Some(period) = b.find_period(account, start)? {
        return Ok(Obtained {
            row: period,
            created: false,
        });
    }
    create_period(b, account, at)
}

/// Creates `account`'s period containing `at` with the account's current limits, or gets the
/// one a concurrent call created.
pub(crate) fn create_period<B: Backend>(
    b: &mut B,
    account: i64,
    at: NaiveDateTime,
) -> Result<Obtained<UsagePeriod>> {
    let (start, end) = monthly_period(at)?;
    let limits = b
        .account_limits(account)?
        .ok_or_else(|| unknown_account(account))?;
    b.create_period(&NewUsagePeriod {
        account,
        period_start: start,
        period_end: end,
        tokens_limit: limits.tokens,
        reports_limit: limits.reports,
        chats_limit: limits.chats,
        created_at: chrono::Utc::now().naive_utc(),
    })
}

pub(crate) fn unknown_account(account: i64) -> Error {
    Error::NotFound(format!(
        "usage account {account} is not registered (see set_usage_limits)"
    ))
}

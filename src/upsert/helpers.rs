//! The two shapes the cron jobs write: stats rows keyed by a unique name, and OAuth tokens
//! that must never move backwards in time.

use super::{Upsert, UpsertModel, UpsertOutcome, Upsertable};
use crate::conn::Dialect;
use crate::conn::WriteConnection;
use crate::error::Result;
use diesel::expression::{AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::Bool;
use diesel::{Column, QueryResult};

/// A stats table: one row per unique key, a data column that the sync overwrites.
///
/// ```text
/// impl upsert_kit::StatsModel for MyStats { type Data = my_stats::data; }
/// ```
pub trait StatsModel: UpsertModel {
    /// The payload column; an update that would not change it leaves the row alone.
    type Data: Column<Table = Self::Table> + Default;
}

/// An OAuth token table: one row per account, monotonic in its expiry.
///
/// ```text
/// impl upsert_kit::AuthModel for MyToken { type ExpiresAt = my_auth::expires_at; }
/// ```
pub trait AuthModel: UpsertModel {
    /// The access token's expiry: a stored token is replaced only by one that expires later.
    type ExpiresAt: Column<Table = Self::Table> + Default;
}

/// Upserts a stats row keyed by its unique field: inserts it, or updates its data and every
/// other non-key column but the model's `keep` columns (e.g. `created_at`). When the stored
/// data equals the incoming data the row is left alone (no write, `updated_at` keeps its
/// value) and reported [`UpsertOutcome::Unchanged`].
///
/// One statement on PostgreSQL; see [`crate::upsert`] for the guarantees.
///
/// # Examples
///
/// ```
/// use upsert_kit::{atomic_upsert_stats, StatsModel, UpsertModel, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::{Connection, SqliteConnection};
/// use serde_json::json;
///
/// #[derive(UpsertModel)]
/// #[upsert(table = stats, key(stats_type), keep(created_at))]
/// pub struct Stats {
///     pub stats_type: String,
///     pub data: serde_json::Value,
///     pub created_at: chrono::NaiveDateTime,
///     pub updated_at: chrono::NaiveDateTime,
/// }
/// impl StatsModel for Stats {
///     type Data = stats::data;
/// }
///
/// let mut conn = establish_sqlite()?;
/// let now = chrono::Utc::now().naive_utc();
/// let row = |hours| Stats { stats_type: "last_7_days".into(), data: json!({"hours": hours}), created_at: now, updated_at: now };
/// assert_eq!(atomic_upsert_stats(&mut conn, &row(10))?, UpsertOutcome::Inserted);
/// assert_eq!(atomic_upsert_stats(&mut conn, &row(10))?, UpsertOutcome::Unchanged);
/// assert_eq!(atomic_upsert_stats(&mut conn, &row(12))?, UpsertOutcome::Updated);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`Upsert::execute`].
pub fn atomic_upsert_stats<C, M>(conn: &mut C, row: &M) -> Result<UpsertOutcome>
where
    C: WriteConnection,
    M: StatsModel + Upsertable<C::Raw, Changed<M::Data>>,
{
    Upsert::new(row)
        .update_if(Changed::<M::Data>::default())
        .execute(conn)
}

/// Upserts an OAuth token keyed by its account. Monotonic: a stored token is replaced only by
/// one whose expiry is strictly later, so a slow refresh that finishes last can never put an
/// older token back; a stale or repeated token is reported [`UpsertOutcome::Unchanged`].
/// Concurrent writers are ordered by the row lock, and the condition is re-checked against
/// the newest committed token.
///
/// # Examples
///
/// ```
/// use upsert_kit::{atomic_upsert_auth, AuthModel, UpsertModel, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::{Connection, SqliteConnection};
/// use chrono::{Duration, Utc};
///
/// #[derive(UpsertModel)]
/// #[upsert(table = tokens, key(id))]
/// pub struct Token {
///     pub id: i64,
///     pub user_id: i64,
///     pub access_token: String,
///     pub refresh_token: String,
///     pub expires_at: chrono::NaiveDateTime,
///     pub updated_at: chrono::NaiveDateTime,
/// }
/// impl AuthModel for Token {
///     type ExpiresAt = tokens::expires_at;
/// }
///
/// let mut conn = establish_sqlite()?;
/// let now = Utc::now().naive_utc();
/// let token = |access: &str, expires_at| Token {
///     id: 1, user_id: 42, access_token: access.into(), refresh_token: "r".into(), expires_at, updated_at: now,
/// };
/// let newer = token("new", now + Duration::hours(6));
/// let older = token("old", now + Duration::hours(5));
/// assert_eq!(atomic_upsert_auth(&mut conn, &newer)?, UpsertOutcome::Inserted);
/// assert_eq!(atomic_upsert_auth(&mut conn, &older)?, UpsertOutcome::Unchanged);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`Upsert::execute`].
pub fn atomic_upsert_auth<C, M>(conn: &mut C, row: &M) -> Result<UpsertOutcome>
where
    C: WriteConnection,
    M: AuthModel + Upsertable<C::Raw, Newer<M::ExpiresAt>>,
{
    Upsert::new(row)
        .update_if(Newer::<M::ExpiresAt>::default())
        .execute(conn)
}

macro_rules! excluded_comparison {
    ($(#[$doc:meta])* $name:ident, |$col:ident, $out:ident| $render:block) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<C>(C);

        impl<C: Default> Default for $name<C> {
            fn default() -> Self {
                $name(C::default())
            }
        }

        impl<C: Column> Expression for $name<C> {
            type SqlType = Bool;
        }

        impl<C: Column> AppearsOnTable<C::Table> for $name<C> {}

        impl<C: Column, GB> ValidGrouping<GB> for $name<C> {
            type IsAggregate = diesel::expression::is_aggregate::Never;
        }

        impl<C: QueryId + 'static> QueryId for $name<C> {
            type QueryId = $name<C>;
            const HAS_STATIC_QUERY_ID: bool = C::HAS_STATIC_QUERY_ID;
        }

        impl<C, DB> QueryFragment<DB> for $name<C>
        where
            DB: Dialect,
            C: Column + QueryFragment<DB>,
        {
            fn walk_ast<'b>(&'b self, mut $out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
                let $col = &self.0;
                $render
                Ok(())
            }
        }
    };
}

excluded_comparison!(
    /// `stored.col IS DISTINCT FROM excluded.col`: the incoming value differs from the stored
    /// one (NULL-safe). On MySQL: ``NOT (stored.col <=> VALUES(`col`))``.
    Changed,
    |column, out| {
        DB::push_distinct_from_excluded(&mut out, column, C::NAME)?;
    }
);

excluded_comparison!(
    /// `excluded.col > stored.col`: the incoming value is strictly greater than the stored one
    /// (``VALUES(`col`) > stored.col`` on MySQL).
    Newer,
    |column, out| {
        DB::push_excluded(&mut out, C::NAME)?;
        out.push_sql(" > ");
        column.walk_ast(out.reborrow())?;
    }
);

/// The incoming row's value of `column`, for an [`Upsert::update_if`] condition, on every
/// backend: `excluded.col` on PostgreSQL and SQLite, ``VALUES(`col`)`` on MySQL. Diesel's own
/// [`excluded`](diesel::upsert::excluded) does the same on PostgreSQL and SQLite but does not
/// exist on MySQL; this one gives every backend the same call.
///
/// ```
/// # use upsert_kit::{Upsert, UpsertModel, UpsertOutcome};
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::ExpressionMethods;
/// use upsert_kit::upsert::incoming;
/// #[derive(UpsertModel)]
/// #[upsert(table = tokens, key(id))]
/// pub struct Token {
///     pub id: i64,
///     pub user_id: i64,
///     pub access_token: String,
///     pub refresh_token: String,
///     pub expires_at: chrono::NaiveDateTime,
///     pub updated_at: chrono::NaiveDateTime,
/// }
/// # let mut conn = establish_sqlite()?;
/// let t = |h| chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(h, 0, 0).unwrap();
/// let token = |access: &str, h| Token { id: 1, user_id: 7, access_token: access.into(), refresh_token: "r".into(), expires_at: t(h), updated_at: t(0) };
/// let mut newer_only = |row: &Token| {
///     Upsert::new(row)
///         .update_if(incoming(tokens::expires_at).gt(tokens::expires_at))
///         .execute(&mut conn)
/// };
/// assert_eq!(newer_only(&token("a", 12))?, UpsertOutcome::Inserted);
/// assert_eq!(newer_only(&token("b", 11))?, UpsertOutcome::Unchanged);
/// assert_eq!(newer_only(&token("c", 13))?, UpsertOutcome::Updated);
/// # Ok(()) }
/// ```
pub fn incoming<C: Column>(column: C) -> Incoming<C> {
    Incoming(column)
}

/// The incoming row's value of a column: see [`incoming`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming<C>(C);

impl<C: Column> Expression for Incoming<C> {
    type SqlType = C::SqlType;
}

impl<C: Column> AppearsOnTable<C::Table> for Incoming<C> {}

impl<C: Column, GB> ValidGrouping<GB> for Incoming<C> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl<C: QueryId + 'static> QueryId for Incoming<C> {
    type QueryId = Incoming<C>;
    const HAS_STATIC_QUERY_ID: bool = C::HAS_STATIC_QUERY_ID;
}

impl<C: Column, DB: Dialect> QueryFragment<DB> for Incoming<C> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        DB::push_excluded(&mut out, C::NAME)
    }
}

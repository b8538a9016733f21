//! The seam between the primitives and the backends.
//!
//! Every primitive takes any [`WriteConnection`]: `PgConnection`, `SqliteConnection`,
//! `MysqlConnection`, or an r2d2 pooled connection of one of them. A pooled connection is
//! forwarded to its inner one here, once ([`WriteConnection::raw`]), and nowhere else. Below
//! it, each primitive has one trait that a backend implements in the primitive's folder, in
//! the file named after the backend (`pg.rs`, `sqlite.rs`, `mysql.rs`):
//!
//! | primitive | the backend's trait | implemented for |
//! |---|---|---|
//! | [`upsert`](crate::upsert) | [`Upsertable`](crate::Upsertable) | the model, per backend connection |
//! | [`get_or_create`](mod@crate::get_or_create) | [`GetOrCreate`](crate::get_or_create::GetOrCreate) | the model, per backend connection |
//! | [`counter`](mod@crate::counter) | [`CounterBackend`](crate::counter::CounterBackend) | the backend |
//! | [`idempotency`](crate::idempotency) | [`IdempotencyBackend`](crate::idempotency::IdempotencyBackend) | the backend |
//! | [`quota`](mod@crate::quota) | [`QuotaBackend`](crate::quota::QuotaBackend) | the backend |
//! | [`claim`](crate::claim) | [`ClaimConnection`](crate::claim::ClaimConnection) | the backend's connection |
//! | [`lock`](crate::lock) | [`LockBackend`](crate::lock::LockBackend) | the backend's connection |
//!
//! Upserts and get-or-create are implemented for the model because what a model needs of a
//! backend (which of its field types the backend stores) is the model's; a lock guard owns
//! its session ([`LockSession`](crate::lock::LockSession)), which a pooled connection keeps as
//! long as it is checked out.
//!
//! The statements themselves are Diesel query fragments over the backend type (`Pg`,
//! `Sqlite`, `Mysql`), not over a connection type: what runs them here is the synchronous
//! [`WriteConnection`]; another front end (an asynchronous connection) would run the same
//! fragments. Each statement's text depends only on the declaration (table and column names)
//! and on which options are set, never on the values (bind parameters), so Diesel prepares it
//! once per connection and keeps it in its statement cache. What the statements of every
//! primitive share about a backend's SQL is [`Dialect`]: how an upsert names the incoming row
//! (`excluded.c` or `VALUES(c)`), how a write returns its row (`RETURNING` or nothing), how
//! a row's integers come back as one value.

use crate::error::{Error, Result};
use crate::tx;
use diesel::backend::Backend;
use diesel::connection::{AnsiTransactionManager, Connection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// What the generic statements need to know about a backend's SQL.
///
/// Implemented for [`diesel::pg::Pg`], [`diesel::sqlite::Sqlite`] and [`diesel::mysql::Mysql`];
/// sealed.
pub trait Dialect: Backend + sealed::Sealed {
    /// The backend as OpenTelemetry's `db.system.name` names it: `"postgresql"`, `"sqlite"`,
    /// `"mysql"` (MariaDB too).
    const SYSTEM: &'static str;

    /// Pushes the incoming row's value of `column` inside an upsert's update:
    /// `excluded."c"` (PostgreSQL, SQLite) or ``VALUES(`c`)`` (MySQL).
    #[doc(hidden)]
    fn push_excluded(out: &mut AstPass<'_, '_, Self>, column: &str) -> QueryResult<()> {
        out.push_sql("excluded.");
        out.push_identifier(column)
    }

    /// Pushes `a IS DISTINCT FROM <the incoming row's column>` (NULL-safe inequality);
    /// ``NOT (a <=> VALUES(`c`))`` on MySQL, which has no `IS DISTINCT FROM`.
    #[doc(hidden)]
    fn push_distinct_from_excluded<'b>(
        out: &mut AstPass<'_, 'b, Self>,
        a: &'b dyn QueryFragment<Self>,
        column: &str,
    ) -> QueryResult<()> {
        a.walk_ast(out.reborrow())?;
        out.push_sql(" IS DISTINCT FROM ");
        Self::push_excluded(out, column)
    }

    /// Pushes what starts an upsert's update of `key`'s conflict:
    /// ` ON CONFLICT ("k") DO UPDATE SET ` or ` ON DUPLICATE KEY UPDATE `.
    #[doc(hidden)]
    fn push_on_conflict_update(out: &mut AstPass<'_, '_, Self>, key: &[&str]) -> QueryResult<()> {
        out.push_sql(" ON CONFLICT (");
        crate::sql::push_identifiers(out, key)?;
        out.push_sql(") DO UPDATE SET ");
        Ok(())
    }

    /// The SQL of the ready-made tables ([`crate::tables`]) on this backend.
    #[doc(hidden)]
    const DEFAULT_TABLES_SQL: &'static str;

    /// How many batches a [`Coalescer`](crate::coalesce::Coalescer) has in flight unless
    /// [`in_flight`](crate::coalesce::CoalescerBuilder::in_flight) says: two where the server
    /// writes several connections' transactions at once; one on SQLite (one writer).
    #[doc(hidden)]
    const BATCHES_IN_FLIGHT: usize = 2;

    /// Upgrades of the ready-made tables that cannot be written to run twice: a query that
    /// returns a row while the upgrade is still to be done, and the upgrade's SQL.
    #[doc(hidden)]
    const DEFAULT_TABLES_UPGRADES: &'static [(&'static str, &'static str)] = &[];

    /// Pushes an expression that gives `columns` (integers, in order) as one JSON array text,
    /// e.g. `json_build_array("a", "b")::text` (PostgreSQL), `json_array("a", "b")` (SQLite).
    #[doc(hidden)]
    fn push_int_array(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()>;

    /// Pushes what makes a write return `columns`: ` RETURNING "a", "b"` where writes return
    /// rows (PostgreSQL, SQLite); nothing on MySQL, where the row is read back after the write.
    #[doc(hidden)]
    fn push_returning(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()> {
        out.push_sql(" RETURNING ");
        crate::sql::push_identifiers(out, columns)
    }

    /// Pushes what makes a write return `columns` (integers) as one JSON array text:
    /// ` RETURNING <array>` where writes return rows (PostgreSQL, SQLite); nothing on MySQL,
    /// where the row is read back after the write.
    #[doc(hidden)]
    fn push_returning_ints(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()> {
        out.push_sql(" RETURNING ");
        Self::push_int_array(out, columns)
    }

    /// Binds a `BIGINT`.
    #[doc(hidden)]
    fn push_int<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b i64) -> QueryResult<()>;
    /// Binds a `TEXT`.
    #[doc(hidden)]
    fn push_text<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b str) -> QueryResult<()>;
    /// Binds a `TIMESTAMP` (UTC, without time zone).
    #[doc(hidden)]
    fn push_timestamp<'b>(
        out: &mut AstPass<'_, 'b, Self>,
        value: &'b chrono::NaiveDateTime,
    ) -> QueryResult<()>;
}

macro_rules! binds {
    () => {
        fn push_int<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b i64) -> QueryResult<()> {
            out.push_bind_param::<BigInt, i64>(value)
        }
        fn push_text<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b str) -> QueryResult<()> {
            out.push_bind_param::<Text, str>(value)
        }
        fn push_timestamp<'b>(
            out: &mut AstPass<'_, 'b, Self>,
            value: &'b chrono::NaiveDateTime,
        ) -> QueryResult<()> {
            out.push_bind_param::<diesel::sql_types::Timestamp, chrono::NaiveDateTime>(value)
        }
    };
}

#[cfg(feature = "postgres")]
impl Dialect for diesel::pg::Pg {
    const SYSTEM: &'static str = "postgresql";
    const DEFAULT_TABLES_SQL: &'static str = concat!(
        include_str!("../migrations/postgres/2026-12-01-000010_upsert_kit_tables/up.sql"),
        "\n",
        include_str!(
            "../migrations/postgres/2026-12-01-000164_upsert_kit_reservations_keyed_by_quota/up.sql"
        ),
    );
    binds!();
    fn push_int_array(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()> {
        out.push_sql("json_build_array(");
        crate::sql::push_identifiers(out, columns)?;
        out.push_sql(")::text");
        Ok(())
    }
}

#[cfg(feature = "sqlite")]
impl Dialect for diesel::sqlite::Sqlite {
    const SYSTEM: &'static str = "sqlite";
    const BATCHES_IN_FLIGHT: usize = 1;
    const DEFAULT_TABLES_SQL: &'static str =
        include_str!("../migrations/sqlite/2026-12-01-000010_upsert_kit_tables/up.sql");
    const DEFAULT_TABLES_UPGRADES: &'static [(&'static str, &'static str)] = &[(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' \
         AND name = 'upsert_kit_reservations' AND sql NOT LIKE '%AUTOINCREMENT%'",
        include_str!(
            "../migrations/sqlite/2026-12-01-000165_upsert_kit_reservation_ids_never_reused/up.sql"
        ),
    )];
    binds!();
    fn push_int_array(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()> {
        out.push_sql("json_array(");
        crate::sql::push_identifiers(out, columns)?;
        out.push_sql(")");
        Ok(())
    }
}

#[cfg(feature = "mysql")]
impl Dialect for diesel::mysql::Mysql {
    const SYSTEM: &'static str = "mysql";
    const DEFAULT_TABLES_SQL: &'static str =
        include_str!("../migrations/mysql/2026-12-01-000010_upsert_kit_tables/up.sql");
    const DEFAULT_TABLES_UPGRADES: &'static [(&'static str, &'static str)] = &[(
        "SELECT CAST(1 AS SIGNED) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME = 'utf8mb4_bin' \
         AND TABLE_NAME IN ('upsert_kit_idempotency_keys', 'upsert_kit_quotas', \
         'upsert_kit_reservations') AND COLUMN_NAME IN ('key', 'quota_key')",
        include_str!("../migrations/mysql/2026-12-01-000166_upsert_kit_keys_no_pad/up.sql"),
    )];
    binds!();
    fn push_int_array(out: &mut AstPass<'_, '_, Self>, columns: &[&str]) -> QueryResult<()> {
        // MySQL 8's JSON_ARRAY is of type JSON; the cast makes it text on both servers.
        out.push_sql("CAST(JSON_ARRAY(");
        crate::sql::push_identifiers(out, columns)?;
        out.push_sql(") AS CHAR)");
        Ok(())
    }
    fn push_excluded(out: &mut AstPass<'_, '_, Self>, column: &str) -> QueryResult<()> {
        // MariaDB has no row alias (MySQL 8.0.19's `AS new`); VALUES(c) works on both, though
        // MySQL 8.0.20+ calls it deprecated.
        out.push_sql("VALUES(");
        out.push_identifier(column)?;
        out.push_sql(")");
        Ok(())
    }
    fn push_on_conflict_update(out: &mut AstPass<'_, '_, Self>, _key: &[&str]) -> QueryResult<()> {
        out.push_sql(" ON DUPLICATE KEY UPDATE ");
        Ok(())
    }
    fn push_distinct_from_excluded<'b>(
        out: &mut AstPass<'_, 'b, Self>,
        a: &'b dyn QueryFragment<Self>,
        column: &str,
    ) -> QueryResult<()> {
        out.push_sql("NOT (");
        a.walk_ast(out.reborrow())?;
        out.push_sql(" <=> ");
        Self::push_excluded(out, column)?;
        out.push_sql(")");
        Ok(())
    }
    fn push_returning(_out: &mut AstPass<'_, '_, Self>, _columns: &[&str]) -> QueryResult<()> {
        Ok(())
    }
    fn push_returning_ints(_out: &mut AstPass<'_, '_, Self>, _columns: &[&str]) -> QueryResult<()> {
        Ok(())
    }
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel::mysql::Mysql {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel::MysqlConnection {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel::pg::Pg {}
    #[cfg(feature = "sqlite")]
    impl Sealed for diesel::sqlite::Sqlite {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel::PgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for diesel::SqliteConnection {}
    #[cfg(feature = "r2d2")]
    impl<C: diesel::r2d2::R2D2Connection + 'static> Sealed
        for diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>
    {
    }
}

/// A connection the counters, quotas and idempotency keys run on: `PgConnection`,
/// `SqliteConnection`, `MysqlConnection`, or an r2d2 pooled connection of one of them. Sealed:
/// its methods are the crate's plumbing.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a connection upsert-kit's counters, quotas and ledgers run on",
    note = "pass `&mut PgConnection`, `&mut SqliteConnection`, `&mut MysqlConnection` or an r2d2 pooled connection of one of them (features `postgres`, `sqlite`, `mysql`, `r2d2`)"
)]
pub trait WriteConnection: sealed::Sealed {
    /// The backend.
    type Backend: Dialect;
    /// The connection itself (the pooled connection's inner one).
    #[doc(hidden)]
    type Raw: WriteConnection<Backend = Self::Backend, Raw = Self::Raw>
        + Connection<Backend = Self::Backend, TransactionManager = AnsiTransactionManager>;

    /// The connection itself.
    #[doc(hidden)]
    fn raw(&mut self) -> &mut Self::Raw;

    /// Runs `f` as one atomic write: a transaction (a savepoint inside the caller's) on
    /// PostgreSQL and MySQL, a `BEGIN IMMEDIATE` transaction on SQLite (one writer at a time).
    #[doc(hidden)]
    fn write<T>(&mut self, f: impl FnOnce(&mut Self::Raw) -> Result<T>) -> Result<T> {
        self.write_as(f)
    }

    /// [`WriteConnection::write`] with the caller's error type (see
    /// [`tx::write_transaction`]).
    #[doc(hidden)]
    fn write_as<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut Self::Raw) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>;

    /// Runs one statement that is atomic by itself: as is on PostgreSQL and on SQLite (a
    /// writing statement takes SQLite's write lock when it starts, so it never fails to
    /// upgrade a read), after the process's writer gate of the file on SQLite.
    #[doc(hidden)]
    fn single<T>(&mut self, f: impl FnOnce(&mut Self::Raw) -> Result<T>) -> Result<T>;

    /// Runs a statement, returning the affected rows.
    #[doc(hidden)]
    fn run_execute(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<usize>;
    /// Runs a statement returning one text column.
    #[doc(hidden)]
    fn run_texts(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<String>>;
    /// Runs a statement returning one `BIGINT` column.
    #[doc(hidden)]
    fn run_ints(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<i64>>;
    /// Runs a statement returning three `BIGINT` columns.
    #[doc(hidden)]
    fn run_int3(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<(i64, i64, i64)>>;
    /// Runs a statement returning a text column and a nullable text column.
    #[doc(hidden)]
    fn run_text_pairs(
        &mut self,
        q: &dyn QueryFragment<Self::Backend>,
    ) -> Result<Vec<(String, Option<String>)>>;
}

/// A borrowed fragment given the SQL type of its rows, so Diesel can load it.
pub(crate) struct Typed<'q, DB: Backend, ST> {
    inner: &'q dyn QueryFragment<DB>,
    _st: PhantomData<ST>,
}

impl<DB: Backend, ST> Typed<'_, DB, ST> {
    pub(crate) fn of(inner: &dyn QueryFragment<DB>) -> Typed<'_, DB, ST> {
        Typed {
            inner,
            _st: PhantomData,
        }
    }
}

impl<DB: Backend, ST> QueryId for Typed<'_, DB, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend, ST> Query for Typed<'_, DB, ST> {
    type SqlType = ST;
}

impl<DB: Backend, ST> QueryFragment<DB> for Typed<'_, DB, ST> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.inner.walk_ast(out)
    }
}

impl<DB: Backend, ST, C> RunQueryDsl<C> for Typed<'_, DB, ST> {}

/// Runs `f` on `c` as is: one PostgreSQL or MySQL statement is atomic by itself.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn direct<C, T>(c: &mut C, f: impl FnOnce(&mut C) -> Result<T>) -> Result<T> {
    f(c)
}

macro_rules! direct_connection {
    ($conn:ty, $single:path, $write:path) => {
        impl WriteConnection for $conn {
            type Backend = <$conn as Connection>::Backend;
            type Raw = $conn;

            fn raw(&mut self) -> &mut Self::Raw {
                self
            }

            fn write_as<T, E: From<Error>>(
                &mut self,
                f: impl FnOnce(&mut Self::Raw) -> std::result::Result<T, E>,
            ) -> std::result::Result<T, E> {
                $write(self, f)
            }

            fn single<T>(&mut self, f: impl FnOnce(&mut Self::Raw) -> Result<T>) -> Result<T> {
                $single(self, f)
            }

            fn run_execute(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<usize> {
                let in_tx = tx::in_transaction(self);
                Typed::<_, Text>::of(q)
                    .execute(self)
                    .map_err(|e| tx::statement_error(in_tx, e))
            }

            fn run_texts(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<String>> {
                let in_tx = tx::in_transaction(self);
                Typed::<_, Text>::of(q)
                    .load(self)
                    .map_err(|e| tx::statement_error(in_tx, e))
            }

            fn run_ints(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<i64>> {
                let in_tx = tx::in_transaction(self);
                Typed::<_, BigInt>::of(q)
                    .load(self)
                    .map_err(|e| tx::statement_error(in_tx, e))
            }

            fn run_int3(
                &mut self,
                q: &dyn QueryFragment<Self::Backend>,
            ) -> Result<Vec<(i64, i64, i64)>> {
                let in_tx = tx::in_transaction(self);
                Typed::<_, (BigInt, BigInt, BigInt)>::of(q)
                    .load(self)
                    .map_err(|e| tx::statement_error(in_tx, e))
            }

            fn run_text_pairs(
                &mut self,
                q: &dyn QueryFragment<Self::Backend>,
            ) -> Result<Vec<(String, Option<String>)>> {
                let in_tx = tx::in_transaction(self);
                Typed::<_, (Text, Nullable<Text>)>::of(q)
                    .load(self)
                    .map_err(|e| tx::statement_error(in_tx, e))
            }
        }
    };
}

#[cfg(feature = "postgres")]
direct_connection!(diesel::PgConnection, direct, tx::transaction);

#[cfg(feature = "sqlite")]
direct_connection!(
    diesel::SqliteConnection,
    tx::sqlite_single,
    tx::immediate_transaction
);

// MySQL has no `RETURNING`: the primitives either leave what a write changed in session
// variables and read them with a second statement, or run the write and the read of its row in
// `write` (a transaction); `single` runs a statement that is atomic by itself.
#[cfg(feature = "mysql")]
direct_connection!(diesel::MysqlConnection, direct, tx::transaction);

#[cfg(feature = "r2d2")]
impl<C> WriteConnection for diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<C>>
where
    C: diesel::r2d2::R2D2Connection + WriteConnection<Raw = C> + 'static,
    C: Connection<
        Backend = <C as WriteConnection>::Backend,
        TransactionManager = AnsiTransactionManager,
    >,
{
    type Backend = <C as WriteConnection>::Backend;
    type Raw = C;

    fn raw(&mut self) -> &mut C {
        self
    }
    fn write_as<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut C) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        (**self).write_as(f)
    }
    fn single<T>(&mut self, f: impl FnOnce(&mut C) -> Result<T>) -> Result<T> {
        (**self).single(f)
    }
    fn run_execute(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<usize> {
        (**self).run_execute(q)
    }
    fn run_texts(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<String>> {
        (**self).run_texts(q)
    }
    fn run_ints(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<i64>> {
        (**self).run_ints(q)
    }
    fn run_int3(&mut self, q: &dyn QueryFragment<Self::Backend>) -> Result<Vec<(i64, i64, i64)>> {
        (**self).run_int3(q)
    }
    fn run_text_pairs(
        &mut self,
        q: &dyn QueryFragment<Self::Backend>,
    ) -> Result<Vec<(String, Option<String>)>> {
        (**self).run_text_pairs(q)
    }
}

/// How a declaration's key is written into a statement.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `$1, $2`: the values, for an insert's `VALUES` or `SELECT` list.
    Values,
    /// `"k1" = $1 AND "k2" = $2`: a `WHERE` condition on the key columns.
    Match,
}

impl KeyStyle {
    /// Writes what comes before the `i`-th key value (named `column`).
    #[doc(hidden)]
    pub fn before<DB: Backend>(
        self,
        out: &mut AstPass<'_, '_, DB>,
        column: &str,
        i: usize,
    ) -> QueryResult<()> {
        match self {
            KeyStyle::Values => {
                if i > 0 {
                    out.push_sql(", ");
                }
            }
            KeyStyle::Match => {
                if i > 0 {
                    out.push_sql(" AND ");
                }
                out.push_identifier(column)?;
                out.push_sql(" = ");
            }
        }
        Ok(())
    }
}

/// A table whose rows are addressed by a key of one or several columns: the common part of
/// [`Counter`](crate::counter::Counter) and [`Quota`](crate::quota::Quota) declarations.
pub trait Keyed {
    /// The Diesel table (`schema::my_table::table`).
    type Table: diesel::Table + Default;
    /// The key's Rust value: the column's type for a one-column key, a tuple for several.
    type Key: Clone + std::fmt::Debug;
    /// The key columns (a unique index or the primary key), in the order of [`Keyed::Key`].
    const KEY: &'static [&'static str];
    /// Rejects a key that must never reach the database (an empty string, a NULL).
    ///
    /// # Errors
    /// The first offending key column.
    fn validate_key(key: &Self::Key) -> std::result::Result<(), crate::error::InvalidInput>;
}

/// Writes a declaration's table and its key's values (as bind parameters, each with its
/// column's SQL type) into a statement. The declaration macros implement it for every backend.
pub trait BindKey<DB: Backend>: Keyed {
    /// Pushes the table's (quoted, possibly schema-qualified) name.
    ///
    /// # Errors
    /// Never in practice (identifiers only).
    fn walk_table(out: AstPass<'_, '_, DB>) -> QueryResult<()>;

    /// Pushes the key's values in [`Keyed::KEY`] order, in `style`.
    ///
    /// # Errors
    /// Serialization errors of the values.
    fn walk_key<'b>(
        key: &'b Self::Key,
        style: KeyStyle,
        out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>;
}

/// Parses a JSON array of integers a statement returned.
pub(crate) fn parse_ints(text: &str) -> Result<Vec<i64>> {
    serde_json::from_str(text)
        .map_err(|e| Error::Database(diesel::result::Error::DeserializationError(Box::new(e))))
}

/// How many times a MySQL write of the crate's own is run when InnoDB picks it as a deadlock's
/// victim (concurrent first inserts of one key can deadlock on the index's gap locks).
#[cfg(feature = "mysql")]
pub(crate) const DEADLOCK_ATTEMPTS: u32 = 5;

/// Runs `f` (a write whose every statement the crate sends, with no effect outside the
/// database) again when the server rolled it back as a deadlock victim ([`Error::Deadlock`]),
/// up to [`DEADLOCK_ATTEMPTS`] times, unless a transaction of the caller's is open: InnoDB
/// then rolled back the caller's whole transaction, which only the caller can re-run.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn retry_deadlocks<C, T>(
    conn: &mut C,
    mut f: impl FnMut(&mut C) -> Result<T>,
) -> Result<T>
where
    C: WriteConnection,
{
    #[cfg(feature = "mysql")]
    {
        if !tx::in_transaction(conn.raw()) {
            use std::time::Duration;
            return crate::retry::Retry::new()
                .max_attempts(DEADLOCK_ATTEMPTS)
                .base_delay(Duration::from_millis(2))
                .max_delay(Duration::from_millis(20))
                .run_while(|e| matches!(e, Error::Deadlock(_)), |_| f(conn));
        }
    }
    f(conn)
}

/// Runs `f` as one write transaction on any of the crate's connections, and commits it (or
/// rolls it back when `f` fails): `BEGIN` on PostgreSQL and MySQL/MariaDB, `BEGIN IMMEDIATE`
/// on SQLite (the database's write lock taken at once, after the process's other writers of the
/// file, see [`tx::immediate_transaction`]); a savepoint inside a transaction of the caller's.
/// The code that runs the same on every backend calls this one; errors are reported as by
/// [`tx::transaction`].
///
/// # Errors
/// `f`'s error, unchanged, or the classified error of `BEGIN`, `COMMIT` or `ROLLBACK`.
///
/// # Examples
/// ```
/// # include!("doctest_setup.rs");
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use upsert_kit::conn::{write_transaction, WriteConnection};
///
/// // Generic over the backend: both rows or neither.
/// fn add_two<C: WriteConnection>(conn: &mut C) -> upsert_kit::Result<()> {
///     write_transaction(conn, |c| {
///         c.batch_execute("INSERT INTO items (sku, name) VALUES ('a-1', 'first')")?;
///         c.batch_execute("INSERT INTO items (sku, name) VALUES ('a-2', 'second')")?;
///         Ok(())
///     })
/// }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = establish_sqlite()?;
/// add_two(&mut conn)?;
/// assert_eq!(items::table.count().get_result::<i64>(&mut conn)?, 2);
/// # Ok(()) }
/// ```
pub fn write_transaction<C, T, E, F>(conn: &mut C, f: F) -> std::result::Result<T, E>
where
    C: WriteConnection,
    E: From<Error>,
    F: FnOnce(&mut C::Raw) -> std::result::Result<T, E>,
{
    conn.write_as(f)
}

//! Claims on MySQL and MariaDB: the same [`Queue`] calls on a `MysqlConnection` (or a pooled
//! one), with `FOR UPDATE SKIP LOCKED` (MariaDB 10.6+, MySQL 8.0+).
//!
//! MySQL has no `RETURNING` on `UPDATE` (MariaDB has it on `INSERT` and `DELETE` only) and no
//! `UPDATE … WHERE id IN (SELECT … FROM the same table)`, so each call that must both change
//! rows and say what it changed is one short transaction of a few statements: lock the rows,
//! update them, read them back, commit. Inside a caller's transaction the same statements run
//! in a savepoint of it.
//!
//! # What is sent
//! `t` is the queue's table, the columns are [`ClaimQueue`]'s, the statuses its literals; every
//! value is a bind parameter; times are the server's `UTC_TIMESTAMP(6)`.
//!
//! [`Queue::claim`]:
//! ```sql
//! SET TRANSACTION ISOLATION LEVEL READ COMMITTED   -- only when not in a caller's transaction
//! BEGIN
//! SELECT id FROM t WHERE status IN ('pending', 'retry')
//!   AND (locked_until IS NULL OR locked_until <= UTC_TIMESTAMP(6))
//!   ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED
//! UPDATE t SET status = 'processing', holder = ?,
//!   locked_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, attempts = attempts + 1
//!   WHERE id IN (?, …)                              -- the ids just locked
//! SELECT * FROM t WHERE id IN (?, …) ORDER BY id
//! COMMIT
//! ```
//! (an empty queue: the `SELECT … SKIP LOCKED` finds nothing, and the transaction commits at
//! once.) [`Queue::complete`] is one statement, fenced by id, holder and attempt (the affected
//! row count is exact whatever the connection's `CLIENT_FOUND_ROWS` flag, since the status
//! always changes):
//! ```sql
//! UPDATE t SET status = 'done', holder = NULL, locked_until = NULL, last_error = NULL
//!   WHERE id = ? AND status = 'processing' AND holder = ? AND attempts = ?
//! ```
//! [`Queue::fail`]: in one transaction, `UPDATE t SET status = 'retry' | 'failed', holder = NULL,
//! last_error = ?, locked_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND | NULL WHERE <fence>`
//! then `SELECT locked_until FROM t WHERE id = ? FOR UPDATE`. [`Queue::extend`]: in one
//! transaction, `UPDATE t SET locked_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE
//! <fence>` then `SELECT locked_until FROM t WHERE <fence> FOR UPDATE` (the fence is judged by
//! the row read back, not by an affected-rows count, which is 0 for an unchanged row without
//! `CLIENT_FOUND_ROWS`). [`Queue::reap_expired`]: in one transaction (READ COMMITTED as for a
//! claim), `SELECT id, attempts FROM t WHERE status = 'processing' AND locked_until <=
//! UTC_TIMESTAMP(6) ORDER BY id FOR UPDATE SKIP LOCKED`, then `UPDATE t SET status = CASE WHEN
//! attempts >= ? THEN 'failed' ELSE 'retry' END, last_error = CONCAT('lease of ',
//! COALESCE(holder, '?'), ' expired'), holder = NULL, locked_until = NULL WHERE id IN (…)`:
//! MySQL assigns left to right, each assignment seeing the ones before it, so `last_error`
//! reads the holder before it is cleared.
//!
//! A queue with a tenant column ([`ClaimQueue::TENANT`], for distributed PostgreSQL) is refused
//! with [`Error::InvalidInput`](crate::Error::InvalidInput) before anything is sent.
//!
//! # Isolation
//! The claim is correct at every isolation level: `SELECT … FOR UPDATE` is a locking read,
//! which reads the newest committed row (never a REPEATABLE READ snapshot) and locks it until
//! the commit, so a row another worker claimed and committed is seen as `processing`, and one
//! it is claiming right now is skipped. What REPEATABLE READ, MySQL's default, adds is gap
//! locks: the scan's next-key locks would make the `UPDATE` (which moves the row in an index
//! on `status`, an insert into that index) wait for the gap another claim locked while that
//! claim waits for this one's: a deadlock. The claim and the reaper therefore run their own
//! transaction at READ COMMITTED (`SET TRANSACTION` applies to the next transaction only; the
//! session keeps its level), where InnoDB takes no gap locks for these statements, and never
//! wait (SKIP LOCKED). Inside a caller's transaction they run at the caller's level: at
//! REPEATABLE READ two such claims may then deadlock, reported as [`Error::Deadlock`](crate::Error::Deadlock)
//! (retryable: re-run the whole transaction). Complete, fail and extend touch one row by its
//! primary key and need nothing beyond any level's current reads.
//!
//! # The table
//! ```sql
//! CREATE TABLE tasks (
//!     id BIGINT AUTO_INCREMENT PRIMARY KEY,
//!     name TEXT NOT NULL,
//!     status VARCHAR(16) NOT NULL DEFAULT 'pending',
//!     attempts INT NOT NULL DEFAULT 0,
//!     locked_until DATETIME(6) NULL,      -- UTC
//!     holder VARCHAR(200) NULL,
//!     last_error TEXT NULL,
//!     KEY tasks_due (status, id)          -- MySQL has no partial index
//! );
//! ```
//!
//! ```
//! # include!("../doctest_setup.rs");
//! use upsert_kit::claim::Queue;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (_db, mut conn) = establish_mysql()?;
//! let queue = Queue::<Task>::new("worker-1")?;
//! let claims = queue.claim(&mut conn, 10)?;
//! assert_eq!(claims.len(), 3);
//! for claim in &claims {
//!     queue.complete(&mut conn, claim)?;
//! }
//! assert!(queue.claim(&mut conn, 10)?.is_empty());
//! # Ok(()) }
//! ```

use super::{fenced, Claim, ClaimConnection, ClaimQueue, Failed, Queue, Reaped, MAX_ERROR_CHARS};
use crate::error::Result;
use crate::tx;
use diesel::connection::SimpleConnection;
use diesel::deserialize::{self, QueryableByName};
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, Datetime, Integer, Text, Untyped};
use diesel::{QueryResult, RunQueryDsl};

impl<Q: ClaimQueue + QueryableByName<Mysql>> QueryableByName<Mysql> for Claim<Q> {
    fn build<'a>(row: &impl NamedRow<'a, Mysql>) -> deserialize::Result<Self> {
        Ok(Claim {
            id: NamedRow::get::<BigInt, i64>(row, Q::ID)?,
            tenant: None,
            attempt: NamedRow::get::<Integer, i32>(row, Q::ATTEMPTS)?,
            holder: NamedRow::get::<Text, String>(row, Q::HOLDER)?,
            locked_until: NamedRow::get::<Datetime, chrono::NaiveDateTime>(row, Q::LOCKED_UNTIL)?
                .and_utc(),
            item: Q::build(row)?,
        })
    }
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct Expired {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Until {
    #[diesel(sql_type = diesel::sql_types::Nullable<Datetime>)]
    at: Option<chrono::NaiveDateTime>,
}

/// A bound value.
enum Bind {
    BigInt(i64),
    Int(i32),
    Text(String),
}

/// A statement: SQL text around bind parameters (`parts.len() == binds.len() + 1`). Its text
/// depends only on the queue's declaration and on how many ids it names, so Diesel's
/// statement cache prepares it once per connection and shape.
struct Sql {
    parts: Vec<String>,
    binds: Vec<Bind>,
}

impl Sql {
    fn new(sql: impl Into<String>) -> Sql {
        Sql {
            parts: vec![sql.into()],
            binds: Vec::new(),
        }
    }

    fn sql(mut self, sql: &str) -> Sql {
        self.parts.last_mut().expect("never empty").push_str(sql);
        self
    }

    fn bind(mut self, value: Bind) -> Sql {
        self.binds.push(value);
        self.parts.push(String::new());
        self
    }

    /// `(?, ?, …)` binding `ids`.
    fn ids(mut self, ids: &[i64]) -> Sql {
        self = self.sql("(");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                self = self.sql(", ");
            }
            self = self.bind(Bind::BigInt(*id));
        }
        self.sql(")")
    }
}

impl QueryFragment<Mysql> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        for (i, part) in self.parts.iter().enumerate() {
            out.push_sql(part);
            match self.binds.get(i) {
                Some(Bind::BigInt(v)) => out.push_bind_param::<BigInt, _>(v)?,
                Some(Bind::Int(v)) => out.push_bind_param::<Integer, _>(v)?,
                Some(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                None => {}
            }
        }
        Ok(())
    }
}

impl QueryId for Sql {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql {
    type SqlType = Untyped;
}

impl RunQueryDsl<MysqlConnection> for Sql {}

/// `` `name` `` (a backtick inside doubled).
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'literal'` (status names are checked by [`Queue::new`] to need no escaping).
fn lit(s: &str) -> String {
    format!("'{s}'")
}

/// The queue's table as Diesel writes it (`` `schema`.`table` `` or `` `table` ``).
fn table<Q: ClaimQueue>() -> String
where
    Q::Table: QueryFragment<Mysql>,
{
    use diesel::query_builder::QueryBuilder;
    let mut out = diesel::mysql::MysqlQueryBuilder::new();
    Q::Table::default()
        .to_sql(&mut out, &Mysql)
        .expect("a table's name is plain SQL");
    out.finish()
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Runs `f` in a transaction of its own at READ COMMITTED, or in a savepoint of the caller's
/// transaction at the caller's level (see the module's "Isolation").
fn read_committed<T>(
    conn: &mut MysqlConnection,
    f: impl FnOnce(&mut MysqlConnection) -> Result<T>,
) -> Result<T> {
    if !tx::in_transaction(conn) {
        conn.batch_execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .map_err(crate::Error::from)?;
    }
    tx::transaction(conn, f)
}

/// `WHERE id = ? AND status = 'processing' AND holder = ? AND attempts = ?`.
fn fence<Q: ClaimQueue>(sql: Sql, claim: &Claim<Q>) -> Sql {
    sql.sql(&format!(" WHERE {} = ", ident(Q::ID)))
        .bind(Bind::BigInt(claim.id))
        .sql(&format!(
            " AND {} = {} AND {} = ",
            ident(Q::STATUS),
            lit(Q::PROCESSING),
            ident(Q::HOLDER)
        ))
        .bind(Bind::Text(claim.holder.clone()))
        .sql(&format!(" AND {} = ", ident(Q::ATTEMPTS)))
        .bind(Bind::Int(claim.attempt))
}

/// `UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND`.
fn from_now(sql: Sql, d: std::time::Duration) -> Sql {
    sql.sql("UTC_TIMESTAMP(6) + INTERVAL ")
        .bind(Bind::BigInt(micros(d)))
        .sql(" MICROSECOND")
}

/// Tenant-scoped queues ([`ClaimQueue::TENANT`], for distributed PostgreSQL) are refused on
/// MySQL before anything is sent: its statements do not filter by a tenant.
fn refuse_tenants<Q: ClaimQueue>() -> Result<()> {
    match Q::TENANT {
        Some(_) => Err(crate::Error::invalid(
            "ClaimQueue::TENANT",
            "tenant-scoped queues are PostgreSQL-only (distributed tables); declare the MySQL queue without TENANT",
        )),
        None => Ok(()),
    }
}

/// How many ids one `IN (…)` list names at most.
const IDS_PER_STATEMENT: usize = 1000;

impl<Q> ClaimConnection<Q> for MysqlConnection
where
    Q: ClaimQueue + QueryableByName<Mysql>,
    Q::Table: QueryFragment<Mysql>,
{
    fn claim_items(&mut self, queue: &Queue<Q>, limit: usize) -> Result<Vec<Claim<Q>>> {
        refuse_tenants::<Q>()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let t = table::<Q>();
        let (id, lu) = (ident(Q::ID), ident(Q::LOCKED_UNTIL));
        read_committed(self, |conn| {
            let candidates: Vec<Id> = Sql::new(format!(
                "SELECT {id} AS id FROM {t} WHERE {} IN ({}, {}) \
                 AND ({lu} IS NULL OR {lu} <= UTC_TIMESTAMP(6)) ORDER BY {id} LIMIT ",
                ident(Q::STATUS),
                lit(Q::PENDING),
                lit(Q::RETRY)
            ))
            .bind(Bind::BigInt(limit))
            .sql(" FOR UPDATE SKIP LOCKED")
            .load(conn)?;
            let ids: Vec<i64> = candidates.into_iter().map(|r| r.id).collect();
            let mut claims = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let update = Sql::new(format!(
                    "UPDATE {t} SET {} = {}, {} = ",
                    ident(Q::STATUS),
                    lit(Q::PROCESSING),
                    ident(Q::HOLDER)
                ))
                .bind(Bind::Text(queue.holder().to_owned()))
                .sql(&format!(", {lu} = "));
                let attempts = ident(Q::ATTEMPTS);
                from_now(update, queue.lease_duration())
                    .sql(&format!(", {attempts} = {attempts} + 1 WHERE {id} IN "))
                    .ids(chunk)
                    .execute(conn)?;
                let rows: Vec<Claim<Q>> = Sql::new(format!("SELECT * FROM {t} WHERE {id} IN "))
                    .ids(chunk)
                    .sql(&format!(" ORDER BY {id}"))
                    .load(conn)?;
                claims.extend(rows);
            }
            Ok(claims)
        })
    }

    fn complete_item(&mut self, _queue: &Queue<Q>, claim: &Claim<Q>) -> Result<()> {
        refuse_tenants::<Q>()?;
        let mut sql = Sql::new(format!(
            "UPDATE {} SET {} = {}",
            table::<Q>(),
            ident(Q::STATUS),
            lit(Q::DONE)
        ));
        for column in [Q::HOLDER, Q::LOCKED_UNTIL, Q::LAST_ERROR] {
            sql = sql.sql(&format!(", {} = NULL", ident(column)));
        }
        let n = fence(sql, claim).execute(self)?;
        fenced(n, claim)
    }

    fn fail_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>, error: &str) -> Result<Failed> {
        refuse_tenants::<Q>()?;
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let park = claim.attempt >= queue.attempts_allowed();
        let t = table::<Q>();
        tx::transaction(self, |conn| {
            let sql = Sql::new(format!(
                "UPDATE {t} SET {} = {}, {} = NULL, {} = ",
                ident(Q::STATUS),
                lit(if park { Q::FAILED } else { Q::RETRY }),
                ident(Q::HOLDER),
                ident(Q::LAST_ERROR)
            ))
            .bind(Bind::Text(error))
            .sql(&format!(", {} = ", ident(Q::LOCKED_UNTIL)));
            let sql = if park {
                sql.sql("NULL")
            } else {
                from_now(sql, queue.backoff_for(claim.attempt))
            };
            let n = fence(sql, claim).execute(conn)?;
            fenced(n, claim)?;
            if park {
                return Ok(Failed::Parked);
            }
            let until: Until = Sql::new(format!(
                "SELECT {} AS at FROM {t} WHERE {} = ",
                ident(Q::LOCKED_UNTIL),
                ident(Q::ID)
            ))
            .bind(Bind::BigInt(claim.id))
            .sql(" FOR UPDATE")
            .get_result(conn)?;
            Ok(match until.at {
                Some(at) => Failed::Retry { at: at.and_utc() },
                None => Failed::Parked,
            })
        })
    }

    fn extend_item(&mut self, queue: &Queue<Q>, claim: &mut Claim<Q>) -> Result<()> {
        refuse_tenants::<Q>()?;
        let t = table::<Q>();
        let lu = ident(Q::LOCKED_UNTIL);
        let until = tx::transaction(self, |conn| -> Result<_> {
            let sql = Sql::new(format!("UPDATE {t} SET {lu} = "));
            fence(from_now(sql, queue.lease_duration()), claim).execute(conn)?;
            let rows: Vec<Until> = fence(Sql::new(format!("SELECT {lu} AS at FROM {t}")), claim)
                .sql(" FOR UPDATE")
                .load(conn)?;
            fenced(rows.len(), claim)?;
            Ok(rows.into_iter().next().and_then(|r| r.at))
        })?;
        if let Some(at) = until {
            claim.locked_until = at.and_utc();
        }
        Ok(())
    }

    fn reap_items(&mut self, queue: &Queue<Q>) -> Result<Reaped> {
        refuse_tenants::<Q>()?;
        let t = table::<Q>();
        let (id, attempts) = (ident(Q::ID), ident(Q::ATTEMPTS));
        let max_attempts = queue.attempts_allowed();
        read_committed(self, |conn| {
            let expired: Vec<Expired> = Sql::new(format!(
                "SELECT {id} AS id, {attempts} AS attempts FROM {t} WHERE {} = {} \
                 AND {} <= UTC_TIMESTAMP(6) ORDER BY {id} FOR UPDATE SKIP LOCKED",
                ident(Q::STATUS),
                lit(Q::PROCESSING),
                ident(Q::LOCKED_UNTIL)
            ))
            .load(conn)?;
            let ids: Vec<i64> = expired.iter().map(|r| r.id).collect();
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                // Assignments run left to right: `last_error` reads the holder before it is
                // cleared.
                Sql::new(format!(
                    "UPDATE {t} SET {} = CASE WHEN {attempts} >= ",
                    ident(Q::STATUS)
                ))
                .bind(Bind::Int(max_attempts))
                .sql(&format!(
                    " THEN {} ELSE {} END, {} = CONCAT('lease of ', COALESCE({}, '?'), ' expired'), \
                     {} = NULL, {} = NULL WHERE {id} IN ",
                    lit(Q::FAILED),
                    lit(Q::RETRY),
                    ident(Q::LAST_ERROR),
                    ident(Q::HOLDER),
                    ident(Q::HOLDER),
                    ident(Q::LOCKED_UNTIL)
                ))
                .ids(chunk)
                .execute(conn)?;
            }
            let parked = expired
                .iter()
                .filter(|r| r.attempts >= max_attempts)
                .count();
            Ok(Reaped {
                requeued: expired.len() - parked,
                parked,
            })
        })
    }
}

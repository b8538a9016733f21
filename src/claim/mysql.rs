//! Claims on MySQL and MariaDB: the same [`Queue`] calls on a `MysqlConnection` (or a pooled
//! one), with `FOR UPDATE SKIP LOCKED` (MariaDB 10.6+, MySQL 8.0+).
//!
//! MySQL has no `RETURNING` on `UPDATE` (MariaDB has it on `INSERT` and `DELETE` only) and no
//! `UPDATE … WHERE id IN (SELECT … FROM the same table)`. A claim outside a caller's transaction
//! is two round trips while claims do not contend: one `UPDATE` that joins the rows it locks
//! with `SKIP LOCKED` and leaves their ids in a session variable, committed on its own, then a
//! read of those rows by their ids (none when it took none). While claims contend (see
//! "Isolation") it is three: a plain read of the first due ids, the `UPDATE` of those still due
//! and not locked elsewhere, found by primary key, then the read of what it took. Inside a
//! caller's transaction, and for the calls that must change a row and read it back, a short
//! transaction of a few statements (a savepoint of the caller's).
//!
//! # What is sent
//! `t` is the queue's table, the columns are [`ClaimQueue`]'s, the statuses its literals; every
//! value is a bind parameter; times are the server's `UTC_TIMESTAMP(6)`.
//!
//! [`Queue::claim`] takes the first due items, locked, skipping rows locked elsewhere; one
//! range of the `(status, id)` index per status, read in id order (a single `status IN (…)
//! ORDER BY id` would be read along the primary key through every finished row, locking each
//! at REPEATABLE READ). Call that `<due ids>`:
//! ```sql
//! (SELECT id FROM t WHERE status = 'pending'
//!    AND (locked_until IS NULL OR locked_until <= UTC_TIMESTAMP(6))
//!    ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED)
//! UNION ALL (the same for status = 'retry') ORDER BY id LIMIT ?
//! ```
//! Outside a transaction (the derived table is materialized first, with its row locks;
//! `STRAIGHT_JOIN` makes the update read `t` only through it; `JSON_TABLE` needs MariaDB 10.6
//! or MySQL 8.0, as `SKIP LOCKED` does), while claims do not contend:
//! ```sql
//! UPDATE (<due ids>) AS due STRAIGHT_JOIN t ON t.id = due.id
//!   JOIN (SELECT @upsert_kit_claimed := NULL AS reset) AS init
//!   SET status = 'processing', holder = ?, locked_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
//!       attempts = attempts + 1 + 0 * LENGTH(@upsert_kit_claimed := CONCAT_WS(',', @upsert_kit_claimed, t.id))
//! ```
//! and while they contend, the first `limit + 7` due ids read without locks (`<due ids>`
//! without `FOR UPDATE SKIP LOCKED`, each branch with `AND id > ?`), then those still due taken
//! by primary key, in id order, skipping rows locked elsewhere (when others took every one,
//! the next ids after them are read; none left, none taken):
//! ```sql
//! UPDATE (SELECT t.id AS id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS c
//!           STRAIGHT_JOIN t FORCE INDEX (PRIMARY) ON t.id = c.id
//!           WHERE status IN ('pending', 'retry') AND (locked_until IS NULL OR locked_until <= UTC_TIMESTAMP(6))
//!           ORDER BY c.id LIMIT ? FOR UPDATE SKIP LOCKED) AS due   -- ? = '[4,5,…]', the ids read
//!   STRAIGHT_JOIN t ON t.id = due.id JOIN (SELECT @upsert_kit_claimed := NULL AS reset) AS init
//!   SET …                                                          -- as above
//! ```
//! then, either way, only when it changed rows (one row: `SELECT * FROM t WHERE id =
//! CAST(@upsert_kit_claimed AS SIGNED) AND …`):
//! ```sql
//! SELECT t.* FROM JSON_TABLE(CONCAT('[', @upsert_kit_claimed, ']'), '$[*]' COLUMNS (id BIGINT PATH '$')) AS c
//!   JOIN t ON t.id = c.id WHERE t.status = 'processing' AND t.holder = ? ORDER BY t.id
//! ```
//! (A deadlock's victim changed nothing and is sent again as a contended claim. The claim
//! commits before its rows
//! are read: when that read fails, the call fails and the items it took stay leased until
//! their lease expires and [`Queue::reap_expired`] requeues them, as for a worker that died
//! holding them.) Inside a caller's transaction, in
//! a savepoint of it at the caller's isolation level:
//! ```sql
//! SELECT id FROM (<due ids>) AS due ORDER BY id
//! UPDATE t SET status = 'processing', holder = ?,
//!   locked_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, attempts = attempts + 1
//!   WHERE id IN (?, …)                              -- the ids just locked
//! SELECT * FROM t WHERE id IN (?, …) ORDER BY id
//! ```
//! [`Queue::complete`] is one statement, fenced by id, holder and attempt (the affected
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
//! `CLIENT_FOUND_ROWS`). [`Queue::reap_expired`]: in one transaction (at READ COMMITTED, see
//! "Isolation"), `SELECT id, attempts FROM t WHERE status = 'processing' AND locked_until <=
//! UTC_TIMESTAMP(6) ORDER BY id FOR UPDATE SKIP LOCKED`, then `UPDATE t SET status = CASE WHEN
//! attempts >= ? THEN 'failed' ELSE 'retry' END, last_error = CONCAT('lease of ',
//! COALESCE(holder, '?'), ' expired'), holder = NULL, locked_until = NULL WHERE id IN (…)`:
//! MySQL assigns left to right, each assignment seeing the ones before it, so `last_error`
//! reads the holder before it is cleared.
//!
//! [`Queue::state`]: one statement, a plain (non-locking) read; `now` is `UTC_TIMESTAMP(6)`,
//! which MySQL evaluates once per statement, and `<ready>` what a claim takes:
//! ```sql
//! SELECT COUNT(CASE WHEN <ready> THEN 1 END) AS ready,
//!        COUNT(CASE WHEN status IN ('pending', 'retry') AND locked_until > now THEN 1 END) AS waiting,
//!        COUNT(CASE WHEN status = 'processing'
//!                        AND (locked_until IS NULL OR locked_until > now) THEN 1 END) AS leased,
//!        COUNT(CASE WHEN status = 'processing' AND locked_until <= now THEN 1 END) AS expired,
//!        COUNT(CASE WHEN status = 'failed' THEN 1 END) AS parked,
//!        TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN <ready> THEN created_at END), now)
//!            AS oldest_ready_micros          -- CAST(NULL AS SIGNED) without CREATED_AT
//! FROM t WHERE status IN ('pending', 'retry', 'processing', 'failed')
//! ```
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
//! claim waits for this one's: a deadlock. The reaper therefore runs its own transaction at
//! READ COMMITTED (`SET TRANSACTION` applies to the next transaction only; the session keeps
//! its level), where InnoDB takes no gap locks for these statements. The claim outside a
//! transaction, one statement committed at once, runs at the session's level while claims do
//! not contend (one worker never deadlocks: a round trip saved); at REPEATABLE READ concurrent
//! claims deadlock on the gap locks of the `status` index (each scan locks gaps that the others'
//! moved rows are inserted into). So a deadlock's victim (nothing applied) is sent again as a
//! contended claim, and for ten seconds after any claim of the process was a victim, every
//! claim outside a transaction is a contended one: its candidates are read without locks, and
//! its locking read is a primary-key lookup of each, which takes no gap lock at any level and
//! never walks the `status` index. That index, under many claims, holds many entries moved
//! out of `pending` and not yet purged; a locking scan of it checks each of them against the
//! transactions in flight (at 8 workers, claim and completion read 1,400 buffer-pool pages each
//! that way, 290 as a contended claim). The candidates' read is a snapshot: a row claimed since
//! is seen `processing` by the locking read and skipped, one claimed right now is locked and
//! skipped. Complete, fail and extend, which may meet a claim's gap lock, are sent again when
//! they are a deadlock's victim outside a caller's transaction (nothing of them applied).
//! Inside a caller's transaction the claim runs at the caller's level: at
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
//!     created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), -- optional; UTC
//!     KEY tasks_due (status, id)          -- MySQL has no partial index
//! );
//! ```
//! The id column is the primary key: the contended claim looks candidates up by `PRIMARY` (on
//! a table without one it fails with [`Error::InvalidInput`](crate::Error::InvalidInput)).
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

use super::{
    fenced, sql, Claim, ClaimConnection, ClaimQueue, Failed, Queue, QueueState, Reaped, StateRow,
    MAX_ERROR_CHARS,
};
use crate::error::Result;
use crate::tx;
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

// The statements. Each is a small query fragment whose text depends only on the queue's
// declaration (its table, columns and status literals) and on how many ids it names, so
// Diesel's statement cache prepares it once per connection and shape; every value is a bind
// parameter. Each is written as templates (the names of [`super::word`]: `{t}` the table, the columns
// by their role, the statuses as literals) with its values bound between them.

/// `UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND`.
fn from_now<'b>(out: &mut AstPass<'_, 'b, Mysql>, micros: &'b i64) -> QueryResult<()> {
    out.push_sql("UTC_TIMESTAMP(6) + INTERVAL ");
    out.push_bind_param::<BigInt, _>(micros)?;
    out.push_sql(" MICROSECOND");
    Ok(())
}

/// ` WHERE id IN (?, …)`.
fn where_ids<'b, Q: ClaimQueue>(
    out: &mut AstPass<'_, 'b, Mysql>,
    table: &'b Q::Table,
    ids: &'b [i64],
) -> QueryResult<()>
where
    Q::Table: QueryFragment<Mysql>,
{
    sql::<Q, Mysql>(out, table, " WHERE {id} IN (")?;
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_bind_param::<BigInt, _>(id)?;
    }
    out.push_sql(")");
    Ok(())
}

/// `status = 'processing', holder = ?, locked_until = <lease from now>, attempts = attempts +
/// 1`, then the template `then`: what a claim sets.
fn taken<'b, Q: ClaimQueue>(
    out: &mut AstPass<'_, 'b, Mysql>,
    table: &'b Q::Table,
    holder: &'b str,
    lease_micros: &'b i64,
    then: &str,
) -> QueryResult<()>
where
    Q::Table: QueryFragment<Mysql>,
{
    sql::<Q, Mysql>(out, table, "{status} = {processing}, {holder} = ")?;
    out.push_bind_param::<Text, _>(holder)?;
    sql::<Q, Mysql>(out, table, ", {locked_until} = ")?;
    from_now(out, lease_micros)?;
    sql::<Q, Mysql>(out, table, ", {attempts} = {attempts} + 1")?;
    sql::<Q, Mysql>(out, table, then)
}

/// The fence of a claim's update: ` WHERE id = ? AND status = 'processing' AND holder = ? AND
/// attempts = ?`.
fn fence<'b, Q: ClaimQueue>(
    out: &mut AstPass<'_, 'b, Mysql>,
    table: &'b Q::Table,
    claim: &'b Claim<Q>,
) -> QueryResult<()>
where
    Q::Table: QueryFragment<Mysql>,
{
    sql::<Q, Mysql>(out, table, " WHERE {id} = ")?;
    out.push_bind_param::<BigInt, _>(&claim.id)?;
    sql::<Q, Mysql>(out, table, " AND {status} = {processing} AND {holder} = ")?;
    out.push_bind_param::<Text, _>(&claim.holder)?;
    sql::<Q, Mysql>(out, table, " AND {attempts} = ")?;
    out.push_bind_param::<Integer, _>(&claim.attempt)
}

/// `(SELECT id AS id FROM t WHERE status = 'pending' AND <due> ORDER BY id LIMIT ?) UNION ALL
/// (the same for 'retry') ORDER BY id LIMIT ?`, `<due>` being `(locked_until IS NULL OR
/// locked_until <= UTC_TIMESTAMP(6))`, each branch with ` AND id > ?` when `after` is given and
/// ending in ` FOR UPDATE SKIP LOCKED` when `locking`: the first `limit` due items. One range of
/// the `(status, id)` index per status, read in id order: a single `status IN (…) ORDER BY id`
/// would be read along the primary key through every finished row, locking each at
/// REPEATABLE READ.
fn due_ids<'b, Q: ClaimQueue>(
    out: &mut AstPass<'_, 'b, Mysql>,
    table: &'b Q::Table,
    limit: &'b i64,
    after: Option<&'b i64>,
    locking: bool,
) -> QueryResult<()>
where
    Q::Table: QueryFragment<Mysql>,
{
    for status in [
        "(SELECT {id} AS id FROM {t} WHERE {status} = {pending}",
        " UNION ALL (SELECT {id} AS id FROM {t} WHERE {status} = {retry}",
    ] {
        sql::<Q, Mysql>(out, table, status)?;
        sql::<Q, Mysql>(
            out,
            table,
            " AND ({locked_until} IS NULL OR {locked_until} <= UTC_TIMESTAMP(6))",
        )?;
        if let Some(after) = after {
            sql::<Q, Mysql>(out, table, " AND {id} > ")?;
            out.push_bind_param::<BigInt, _>(after)?;
        }
        sql::<Q, Mysql>(out, table, " ORDER BY {id} LIMIT ")?;
        out.push_bind_param::<BigInt, _>(limit)?;
        out.push_sql(if locking {
            " FOR UPDATE SKIP LOCKED)"
        } else {
            ")"
        });
    }
    out.push_sql(" ORDER BY id LIMIT ");
    out.push_bind_param::<BigInt, _>(limit)
}

/// `status IN ('pending', 'retry') AND (locked_until IS NULL OR locked_until <=
/// UTC_TIMESTAMP(6))`: what a claim takes.
const READY: &str = "{status} IN ({pending}, {retry}) \
                     AND ({locked_until} IS NULL OR {locked_until} <= UTC_TIMESTAMP(6))";

/// ` AS upsert_kit_due STRAIGHT_JOIN t ON t.id = upsert_kit_due.id JOIN (SELECT
/// @upsert_kit_claimed := NULL AS reset) AS init SET `: the claim of the ids of the derived
/// table before it, which [`TAKEN_IDS`] leaves in the session for [`Claimed`].
const JOIN_DUE: &str = " AS upsert_kit_due STRAIGHT_JOIN {t} ON {t}.{id} = upsert_kit_due.id \
                        JOIN (SELECT @upsert_kit_claimed := NULL AS reset) AS upsert_kit_init SET ";

/// Leaves each id the claim takes in the session variable (an added zero).
const TAKEN_IDS: &str =
    " + 0 * LENGTH(@upsert_kit_claimed := CONCAT_WS(',', @upsert_kit_claimed, {t}.{id}))";

/// Declares a statement struct over queue `Q` (its table is the field `table`) and the
/// query-builder traits every statement shares; `$walk` writes its text.
macro_rules! statement {
    (
        $(#[$doc:meta])*
        $name:ident<$lt:lifetime> { $($field:ident: $ty:ty),* $(,)? }
        |$self:ident, $out:ident| $walk:block
    ) => {
        $(#[$doc])*
        struct $name<$lt, Q: ClaimQueue> {
            table: Q::Table,
            $($field: $ty,)*
            _queue: std::marker::PhantomData<&$lt Q>,
        }

        impl<$lt, Q: ClaimQueue> $name<$lt, Q> {
            #[allow(clippy::new_ret_no_self)]
            fn new($($field: $ty),*) -> Self {
                $name { table: Q::Table::default(), $($field,)* _queue: std::marker::PhantomData }
            }
        }

        impl<Q: ClaimQueue> QueryId for $name<'_, Q> {
            type QueryId = ();
            const HAS_STATIC_QUERY_ID: bool = false;
        }

        impl<Q: ClaimQueue> Query for $name<'_, Q> {
            type SqlType = Untyped;
        }

        impl<Q: ClaimQueue> RunQueryDsl<MysqlConnection> for $name<'_, Q> {}

        impl<Q: ClaimQueue> QueryFragment<Mysql> for $name<'_, Q>
        where
            Q::Table: QueryFragment<Mysql>,
        {
            fn walk_ast<'b>(&'b $self, mut $out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
                $walk
                Ok(())
            }
        }
    };
}

statement! {
    /// The locked due ids, in a caller's transaction.
    Due<'a> { limit: i64 }
    |self, out| {
        let t = &self.table;
        out.push_sql("SELECT id FROM (");
        due_ids::<Q>(&mut out, t, &self.limit, None, true)?;
        out.push_sql(") AS upsert_kit_due ORDER BY id");
    }
}

statement! {
    /// The candidates of a contended claim outside a caller's transaction: the due ids after
    /// `after`, a plain read of the `(status, id)` index.
    Candidates<'a> { limit: i64, after: i64 }
    |self, out| {
        let t = &self.table;
        out.push_sql("SELECT id FROM (");
        due_ids::<Q>(&mut out, t, &self.limit, Some(&self.after), false)?;
        out.push_sql(") AS upsert_kit_due ORDER BY id");
    }
}

statement! {
    /// The claim of the rows [`Due`] just locked.
    Take<'a> { holder: &'a str, lease_micros: i64, ids: &'a [i64] }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "UPDATE {t} SET ")?;
        taken::<Q>(&mut out, t, self.holder, &self.lease_micros, "")?;
        where_ids::<Q>(&mut out, t, self.ids)?;
    }
}

statement! {
    /// The rows of `ids`, in id order.
    Rows<'a> { ids: &'a [i64] }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "SELECT * FROM {t}")?;
        where_ids::<Q>(&mut out, t, self.ids)?;
        sql::<Q, Mysql>(&mut out, t, " ORDER BY {id}")?;
    }
}

statement! {
    /// The claim in one statement while claims do not contend (see [`TakeCandidates`]): the
    /// derived table of the locked due ids is materialized first, with its row locks, skipping
    /// rows locked elsewhere; `STRAIGHT_JOIN` makes the update read `t` only through it (read
    /// first, `t`'s scan would wait on every row locked elsewhere).
    TakeDue<'a> { limit: i64, holder: &'a str, lease_micros: i64 }
    |self, out| {
        let t = &self.table;
        out.push_sql("UPDATE (");
        due_ids::<Q>(&mut out, t, &self.limit, None, true)?;
        out.push_sql(")");
        sql::<Q, Mysql>(&mut out, t, JOIN_DUE)?;
        taken::<Q>(&mut out, t, self.holder, &self.lease_micros, TAKEN_IDS)?;
    }
}

statement! {
    /// The claim in one statement while claims contend, the first parameter the JSON array of
    /// the [`Candidates`] just read. The derived table is materialized first, with its row
    /// locks: the candidates sorted, then looked up one by one by primary key (the only index
    /// it locks), each re-checked against its newest committed version, skipping rows locked
    /// elsewhere, until `limit` are found (sorting by `t.id` instead would lock every candidate
    /// before the sort).
    TakeCandidates<'a> { candidates: &'a str, limit: i64, holder: &'a str, lease_micros: i64 }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "UPDATE (SELECT {t}.{id} AS id FROM JSON_TABLE(")?;
        out.push_bind_param::<Text, _>(self.candidates)?;
        sql::<Q, Mysql>(
            &mut out,
            t,
            ", '$[*]' COLUMNS (id BIGINT PATH '$')) AS upsert_kit_candidate \
             STRAIGHT_JOIN {t} FORCE INDEX (PRIMARY) ON {t}.{id} = upsert_kit_candidate.id WHERE ",
        )?;
        sql::<Q, Mysql>(&mut out, t, READY)?;
        out.push_sql(" ORDER BY upsert_kit_candidate.id LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.limit)?;
        out.push_sql(" FOR UPDATE SKIP LOCKED)");
        sql::<Q, Mysql>(&mut out, t, JOIN_DUE)?;
        taken::<Q>(&mut out, t, self.holder, &self.lease_micros, TAKEN_IDS)?;
    }
}

statement! {
    /// The rows [`TakeDue`] or [`TakeCandidates`] claimed, read back by the ids it left in the
    /// session (a primary-key lookup per id).
    Claimed<'a> { holder: &'a str }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(
            &mut out,
            t,
            "SELECT {t}.* FROM JSON_TABLE(CONCAT('[', @upsert_kit_claimed, ']'), \
             '$[*]' COLUMNS (id BIGINT PATH '$')) AS upsert_kit_claimed \
             JOIN {t} ON {t}.{id} = upsert_kit_claimed.id \
             WHERE {t}.{status} = {processing} AND {t}.{holder} = ",
        )?;
        out.push_bind_param::<Text, _>(self.holder)?;
        sql::<Q, Mysql>(&mut out, t, " ORDER BY {t}.{id}")?;
    }
}

statement! {
    /// The one row [`TakeDue`] or [`TakeCandidates`] claimed when it took one (a primary-key
    /// lookup, no `JSON_TABLE`).
    ClaimedOne<'a> { holder: &'a str }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(
            &mut out,
            t,
            "SELECT * FROM {t} WHERE {id} = CAST(@upsert_kit_claimed AS SIGNED) \
             AND {status} = {processing} AND {holder} = ",
        )?;
        out.push_bind_param::<Text, _>(self.holder)?;
    }
}

statement! {
    /// [`Queue::complete`]'s update.
    Complete<'a> { claim: &'a Claim<Q> }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(
            &mut out,
            t,
            "UPDATE {t} SET {status} = {done}, {holder} = NULL, {locked_until} = NULL, \
             {last_error} = NULL",
        )?;
        fence::<Q>(&mut out, t, self.claim)?;
    }
}

statement! {
    /// [`Queue::fail`]'s update: back to `retry` after the backoff, or parked as `failed`.
    Fail<'a> { claim: &'a Claim<Q>, error: &'a str, retry_after_micros: Option<i64> }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, match self.retry_after_micros {
            Some(_) => "UPDATE {t} SET {status} = {retry}",
            None => "UPDATE {t} SET {status} = {failed}",
        })?;
        sql::<Q, Mysql>(&mut out, t, ", {holder} = NULL, {last_error} = ")?;
        out.push_bind_param::<Text, _>(self.error)?;
        sql::<Q, Mysql>(&mut out, t, ", {locked_until} = ")?;
        match &self.retry_after_micros {
            Some(micros) => from_now(&mut out, micros)?,
            None => out.push_sql("NULL"),
        }
        fence::<Q>(&mut out, t, self.claim)?;
    }
}

statement! {
    /// When a failed item is due.
    DueAt<'a> { id: i64 }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "SELECT {locked_until} AS at FROM {t} WHERE {id} = ")?;
        out.push_bind_param::<BigInt, _>(&self.id)?;
        out.push_sql(" FOR UPDATE");
    }
}

statement! {
    /// [`Queue::extend`]'s update.
    Extend<'a> { claim: &'a Claim<Q>, lease_micros: i64 }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "UPDATE {t} SET {locked_until} = ")?;
        from_now(&mut out, &self.lease_micros)?;
        fence::<Q>(&mut out, t, self.claim)?;
    }
}

statement! {
    /// The lease a claim holds.
    Lease<'a> { claim: &'a Claim<Q> }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "SELECT {locked_until} AS at FROM {t}")?;
        fence::<Q>(&mut out, t, self.claim)?;
        out.push_sql(" FOR UPDATE");
    }
}

statement! {
    /// The expired leases, locked.
    ExpiredLeases<'a> {}
    |self, out| {
        sql::<Q, Mysql>(
            &mut out,
            &self.table,
            "SELECT {id} AS id, {attempts} AS attempts FROM {t} \
             WHERE {status} = {processing} AND {locked_until} <= UTC_TIMESTAMP(6) \
             ORDER BY {id} FOR UPDATE SKIP LOCKED",
        )?;
    }
}

statement! {
    /// The expired leases put back or parked. MySQL assigns left to right, each assignment
    /// seeing the ones before it: `last_error` reads the holder before it is cleared.
    Reap<'a> { max_attempts: i32, ids: &'a [i64] }
    |self, out| {
        let t = &self.table;
        sql::<Q, Mysql>(&mut out, t, "UPDATE {t} SET {status} = CASE WHEN {attempts} >= ")?;
        out.push_bind_param::<Integer, _>(&self.max_attempts)?;
        sql::<Q, Mysql>(
            &mut out,
            t,
            " THEN {failed} ELSE {retry} END, \
             {last_error} = CONCAT('lease of ', COALESCE({holder}, '?'), ' expired'), \
             {holder} = NULL, {locked_until} = NULL",
        )?;
        where_ids::<Q>(&mut out, t, self.ids)?;
    }
}

statement! {
    /// [`Queue::state`]'s one row of counts (the module's "What is sent").
    State<'a> {}
    |self, out| {
        let t = &self.table;
        out.push_sql("SELECT COUNT(CASE WHEN ");
        sql::<Q, Mysql>(&mut out, t, READY)?;
        sql::<Q, Mysql>(
            &mut out,
            t,
            " THEN 1 END) AS ready, \
             COUNT(CASE WHEN {status} IN ({pending}, {retry}) \
                 AND {locked_until} > UTC_TIMESTAMP(6) THEN 1 END) AS waiting, \
             COUNT(CASE WHEN {status} = {processing} \
                 AND ({locked_until} IS NULL OR {locked_until} > UTC_TIMESTAMP(6)) \
                 THEN 1 END) AS leased, \
             COUNT(CASE WHEN {status} = {processing} \
                 AND {locked_until} <= UTC_TIMESTAMP(6) THEN 1 END) AS expired, \
             COUNT(CASE WHEN {status} = {failed} THEN 1 END) AS parked, ",
        )?;
        match Q::CREATED_AT {
            Some(created_at) => {
                out.push_sql("TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN ");
                sql::<Q, Mysql>(&mut out, t, READY)?;
                out.push_sql(" THEN ");
                out.push_identifier(created_at)?;
                out.push_sql(" END), UTC_TIMESTAMP(6))");
            }
            None => out.push_sql("CAST(NULL AS SIGNED)"),
        }
        sql::<Q, Mysql>(
            &mut out,
            t,
            " AS oldest_ready_micros FROM {t} \
             WHERE {status} IN ({pending}, {retry}, {processing}, {failed})",
        )?;
    }
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `SET TRANSACTION ISOLATION LEVEL READ COMMITTED`: the next transaction only (a statement
/// outside a transaction is one). A query fragment of its own, so that Diesel keeps it
/// prepared: one round trip (`sql_query` text is prepared anew at each call, two; Diesel's
/// `batch_execute` turns the multi-statement option on and off around it, three).
#[derive(diesel::query_builder::QueryId)]
struct NextReadCommitted;

impl QueryFragment<Mysql> for NextReadCommitted {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
        Ok(())
    }
}

impl RunQueryDsl<MysqlConnection> for NextReadCommitted {}

fn next_read_committed(conn: &mut MysqlConnection) -> Result<()> {
    NextReadCommitted.execute(conn)?;
    Ok(())
}

/// Whether claims contend: a claim of this process outside a transaction was a deadlock's
/// victim less than [`CONTENDED_FOR`] ago. Until then claims read their candidates first.
mod contention {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Instant;

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Milliseconds since [`EPOCH`] plus one at the last deadlock; 0 for none yet.
    static LAST_DEADLOCK: AtomicU64 = AtomicU64::new(0);

    fn now() -> u64 {
        let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX - 1) + 1
    }

    pub(super) fn seen() {
        LAST_DEADLOCK.store(now(), Ordering::Relaxed);
    }

    pub(super) fn recent() -> bool {
        let last = LAST_DEADLOCK.load(Ordering::Relaxed);
        let window = u64::try_from(super::CONTENDED_FOR.as_millis()).unwrap_or(u64::MAX);
        last != 0 && now().saturating_sub(last) < window
    }
}

/// How long after a claim's deadlock the claims of this process read their candidates first.
const CONTENDED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` in a transaction of its own at READ COMMITTED, or in a savepoint of the caller's
/// transaction at the caller's level (see the module's "Isolation").
fn read_committed<T>(
    conn: &mut MysqlConnection,
    f: impl FnOnce(&mut MysqlConnection) -> Result<T>,
) -> Result<T> {
    if !tx::in_transaction(conn) {
        next_read_committed(conn)?;
    }
    tx::transaction(conn, f)
}

/// Tenant-scoped queues ([`ClaimQueue::TENANT`], for distributed PostgreSQL) are refused on
/// MySQL before anything is sent: its statements do not filter by a tenant.
fn refuse_tenants<Q: ClaimQueue>() -> Result<()> {
    match Q::TENANT {
        Some(_) => Err(crate::error::Error::invalid(
            "ClaimQueue::TENANT",
            "tenant-scoped queues are PostgreSQL-only (distributed tables); declare the MySQL queue without TENANT",
        )),
        None => Ok(()),
    }
}

/// The claim while claims contend: reads the first due ids (a plain read of the `(status,
/// id)` index), then claims those still due and not locked elsewhere ([`TakeCandidates`]).
/// When others took every candidate between the read and the claim, reads the next ones; none
/// left, none taken. Returns how many it took, their ids left in the session for [`Claimed`].
fn take_candidates<Q>(
    conn: &mut MysqlConnection,
    queue: &Queue<Q>,
    limit: i64,
    lease: i64,
) -> Result<usize>
where
    Q: ClaimQueue,
    Q::Table: QueryFragment<Mysql>,
{
    let span = limit.saturating_add(CANDIDATE_SLACK);
    let mut after = i64::MIN;
    loop {
        let candidates: Vec<Id> = Candidates::<Q>::new(span, after).load(conn)?;
        let Some(last) = candidates.last() else {
            return Ok(0);
        };
        after = last.id;
        // The ids as the JSON array `TakeCandidates` binds.
        let list = serde_json::Value::from(candidates.iter().map(|c| c.id).collect::<Vec<_>>())
            .to_string();
        let taken = crate::conn::retry_deadlocks(conn, |conn| {
            Ok(TakeCandidates::<Q>::new(&list, limit, queue.holder(), lease).execute(conn)?)
        })
        .map_err(no_primary_key)?;
        if taken > 0 {
            return Ok(taken);
        }
    }
}

/// A queue table without a primary key (error 1176, `Key 'PRIMARY' doesn't exist`) as the
/// caller's mistake it is: the contended claim looks its candidates up by `PRIMARY`.
fn no_primary_key(e: crate::error::Error) -> crate::error::Error {
    match &e {
        crate::error::Error::Database(diesel::result::Error::DatabaseError(_, info))
            if info.message().starts_with("Key 'PRIMARY' doesn't exist") =>
        {
            crate::error::Error::invalid(
                "ClaimQueue::ID",
                "the queue's table has no primary key; on MySQL its id column must be the primary key",
            )
        }
        _ => e,
    }
}

/// How many candidates beyond its limit a contended claim reads: those other workers take
/// between the read and the claim are skipped.
const CANDIDATE_SLACK: i64 = 7;

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
        let lease = micros(queue.lease_duration());
        if !tx::in_transaction(self) {
            // While claims do not contend, two round trips: the claim, one statement committed
            // on its own, then the rows it took (none to read when it took none). While they
            // contend, three: a plain read of the first due ids, the claim of those still due
            // and not locked elsewhere, then the rows it took (see the module's "Isolation").
            let taken = if contention::recent() {
                take_candidates(self, queue, limit, lease)?
            } else {
                let take = TakeDue::<Q>::new(limit, queue.holder(), lease);
                match take.execute(self).map_err(crate::error::Error::from) {
                    Err(crate::error::Error::Deadlock(_)) => {
                        // Nothing of it applied: the claims contend.
                        contention::seen();
                        take_candidates(self, queue, limit, lease)?
                    }
                    other => other?,
                }
            };
            return Ok(match taken {
                0 => Vec::new(),
                1 => ClaimedOne::<Q>::new(queue.holder()).load(self)?,
                _ => Claimed::<Q>::new(queue.holder()).load(self)?,
            });
        }
        read_committed(self, |conn| {
            let candidates: Vec<Id> = Due::<Q>::new(limit).load(conn)?;
            let ids: Vec<i64> = candidates.into_iter().map(|r| r.id).collect();
            let mut claims = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                Take::<Q>::new(queue.holder(), lease, chunk).execute(conn)?;
                let rows: Vec<Claim<Q>> = Rows::<Q>::new(chunk).load(conn)?;
                claims.extend(rows);
            }
            Ok(claims)
        })
    }

    fn complete_item(&mut self, _queue: &Queue<Q>, claim: &Claim<Q>) -> Result<()> {
        refuse_tenants::<Q>()?;
        // A deadlock's victim (a claim's gap lock met at REPEATABLE READ) changed nothing.
        let n = crate::conn::retry_deadlocks(self, |conn| Ok(Complete::new(claim).execute(conn)?))?;
        fenced(n, claim)
    }

    fn fail_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>, error: &str) -> Result<Failed> {
        refuse_tenants::<Q>()?;
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let park = claim.attempt >= queue.attempts_allowed();
        let retry_after = (!park).then(|| micros(queue.backoff_for(claim.attempt)));
        crate::conn::retry_deadlocks(self, |conn| {
            tx::transaction(conn, |conn| {
                let n = Fail::new(claim, &error, retry_after).execute(conn)?;
                fenced(n, claim)?;
                if park {
                    return Ok(Failed::Parked);
                }
                let until: Until = DueAt::<Q>::new(claim.id).get_result(conn)?;
                Ok(match until.at {
                    Some(at) => Failed::Retry { at: at.and_utc() },
                    None => Failed::Parked,
                })
            })
        })
    }

    fn extend_item(&mut self, queue: &Queue<Q>, claim: &mut Claim<Q>) -> Result<()> {
        refuse_tenants::<Q>()?;
        let lease = micros(queue.lease_duration());
        let until = crate::conn::retry_deadlocks(self, |conn| {
            tx::transaction(conn, |conn| -> Result<_> {
                Extend::new(claim, lease).execute(conn)?;
                let rows: Vec<Until> = Lease::new(claim).load(conn)?;
                fenced(rows.len(), claim)?;
                Ok(rows.into_iter().next().and_then(|r| r.at))
            })
        })?;
        if let Some(at) = until {
            claim.locked_until = at.and_utc();
        }
        Ok(())
    }

    fn reap_items(&mut self, queue: &Queue<Q>) -> Result<Reaped> {
        refuse_tenants::<Q>()?;
        let max_attempts = queue.attempts_allowed();
        read_committed(self, |conn| {
            let expired: Vec<Expired> = ExpiredLeases::<Q>::new().load(conn)?;
            let ids: Vec<i64> = expired.iter().map(|r| r.id).collect();
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                Reap::<Q>::new(max_attempts, chunk).execute(conn)?;
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

    fn queue_state(&mut self, _queue: &Queue<Q>) -> Result<QueueState> {
        refuse_tenants::<Q>()?;
        let row: StateRow = State::<Q>::new().get_result(self)?;
        Ok(row.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, QueryDsl};
    use upsert_kit_support::TestMysql;

    diesel::table! {
        tasks (id) {
            id -> BigInt,
            name -> Text,
        }
    }

    #[derive(Debug, QueryableByName)]
    #[diesel(table_name = tasks)]
    struct Task {
        name: String,
    }

    impl ClaimQueue for Task {
        type Table = tasks::table;
    }

    /// The contended claim reads past candidates that other transactions hold locked (those it
    /// read first, and the next), takes the first free item without waiting for any lock, and
    /// takes nothing once every due item is locked elsewhere.
    #[test]
    fn a_contended_claim_reads_past_candidates_locked_elsewhere() {
        let db = TestMysql::with_sql(upsert_kit_support::mysql::TASKS_TABLE);
        let mut conn = db.conn();
        let names: Vec<String> = (1..=20).map(|i| format!("('task-{i}')")).collect();
        conn.batch_execute(&format!(
            "INSERT INTO tasks (name) VALUES {}",
            names.join(", ")
        ))
        .unwrap();
        // A claim that waited for a lock would fail here (after 2 s) instead of hanging.
        conn.batch_execute("SET SESSION innodb_lock_wait_timeout = 2")
            .unwrap();
        let queue = Queue::<Task>::new("w").unwrap();
        let lease = micros(queue.lease_duration());
        let claim_one = |conn: &mut MysqlConnection| -> Vec<String> {
            match take_candidates(conn, &queue, 1, lease).unwrap() {
                0 => Vec::new(),
                _ => ClaimedOne::<Task>::new(queue.holder())
                    .load::<Claim<Task>>(conn)
                    .unwrap()
                    .into_iter()
                    .map(|c| c.item.name)
                    .collect(),
            }
        };

        let mut other = db.conn();
        other
            .transaction(|other| {
                // Another transaction holds the first 18 items: the first candidates
                // (1 + CANDIDATE_SLACK of them) and then some.
                // One row at a time by primary key: a range or a list would lock the rows
                // and gaps around it too (REPEATABLE READ).
                for id in 1..=18 {
                    other.batch_execute(&format!(
                        "SELECT id FROM tasks WHERE id = {id} FOR UPDATE"
                    ))?;
                }
                assert_eq!(claim_one(&mut conn), ["task-19"]);
                assert_eq!(claim_one(&mut conn), ["task-20"]);
                assert!(claim_one(&mut conn).is_empty(), "every due item is locked");
                Ok::<_, diesel::result::Error>(())
            })
            .unwrap();
        assert_eq!(claim_one(&mut conn), ["task-1"]);
        // A large limit: the rest, in one statement.
        assert_eq!(
            take_candidates(&mut conn, &queue, 100_000, lease).unwrap(),
            17
        );
        let attempts: Vec<i32> = tasks::table
            .select(diesel::dsl::sql::<Integer>("attempts"))
            .order(tasks::id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(attempts, vec![1; 20], "each item taken once");
    }

    /// A queue table whose id is not its primary key is refused as the caller's mistake, not
    /// as a database error, when a contended claim needs the key.
    #[test]
    fn a_contended_claim_on_a_table_without_a_primary_key_is_invalid_input() {
        let ddl = upsert_kit_support::mysql::TASKS_TABLE.replace(
            "id BIGINT AUTO_INCREMENT PRIMARY KEY",
            "id BIGINT AUTO_INCREMENT UNIQUE KEY",
        );
        assert_ne!(ddl, upsert_kit_support::mysql::TASKS_TABLE);
        let db = TestMysql::with_sql(&ddl);
        let mut conn = db.conn();
        conn.batch_execute("INSERT INTO tasks (name) VALUES ('a')")
            .unwrap();
        let queue = Queue::<Task>::new("w").unwrap();
        let e = take_candidates(&mut conn, &queue, 1, micros(queue.lease_duration())).unwrap_err();
        assert!(matches!(&e, crate::error::Error::InvalidInput(_)), "{e:?}");
        assert!(e.to_string().contains("primary key"), "{e}");
    }
}

//! Idempotency keys on the user's own ledger table: a write runs once per key; a repeat
//! returns the first call's stored result without writing.
//!
//! A ledger table has four columns: the key (`TEXT`, the primary key or a unique index), the
//! request's fingerprint (`TEXT`), the stored result (`TEXT`, nullable) and when the key was
//! first used (`TIMESTAMP`, UTC). Declare it with [`ledger!`](crate::ledger!):
//!
//! ```text
//! upsert_kit::ledger! {
//!     table = idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
//!     pub struct Keys;
//! }
//! ```
//!
//! # What a call does
//! [`run`] opens a transaction (a savepoint inside the caller's; `BEGIN IMMEDIATE` on SQLite)
//! and claims the key: `INSERT INTO ledger … ON CONFLICT (key) DO NOTHING RETURNING 1`.
//! - Claimed: the closure runs in the same transaction, its result is stored in the key's row,
//!   and everything commits together ([`Idempotent::applied`] is `true`).
//! - Taken: the row is read. Another fingerprint is [`Error::IdempotencyConflict`] (the IETF
//!   draft's 422); the same one returns the stored result and runs nothing
//!   ([`Idempotent::applied`] is `false`).
//! - In flight (another session holds the key's uncommitted row): on PostgreSQL the insert
//!   waits on the key's unique-index entry until the first call commits (then the repeat gets its
//!   result) or rolls back (then the repeat claims the key and runs); on SQLite the transaction
//!   waits for the single write lock (up to the busy timeout, then [`Error::Busy`], nothing
//!   applied). Never a second write. A row seen without a result (written by something else than
//!   this module) is [`Error::IdempotencyInFlight`] (the draft's 409).
//!
//! Because the result and the write commit together, a call whose outcome is unknown (the
//! connection lost during `COMMIT`, [`Error::OutcomeUnknown`]) may be retried with the same key:
//! it is applied at most once. Keys are kept until [`prune`] removes them; choose a retention
//! longer than any retry of a request can take.
//!
//! [`increment_once`] is an idempotent counter increment that stays **one statement** on
//! PostgreSQL: `WITH up AS (INSERT INTO counter … ON CONFLICT … DO UPDATE … RETURNING totals)
//! INSERT INTO ledger … SELECT … FROM up`. A repeated key makes the ledger insert fail with a
//! unique violation, which undoes the whole statement, counter change included; the ledger row
//! is then read as above.
//!
//! Under REPEATABLE READ or SERIALIZABLE, a repeat of a key committed after the caller's
//! snapshot is a [`Error::SerializationFailure`] on PostgreSQL: retry the caller's transaction.
//!
//! On MySQL and MariaDB the claim is `INSERT … ON DUPLICATE KEY UPDATE key = IF((@upsert_kit_hit
//! := nonce) IS NULL, key, key)` (a no-op update that records that the key was taken; not
//! `INSERT IGNORE`) and `SELECT … WHERE NOT COALESCE(@upsert_kit_hit = nonce, FALSE)`; an
//! in-flight first call holds the key's row lock, so a repeat waits for its commit or rollback
//! as on PostgreSQL. The stored result is read `LOCK IN SHARE MODE`, which sees the newest
//! committed row at any isolation level, REPEATABLE READ included. [`increment_once`] runs as
//! [`run`] around the counter increment (one transaction).

use crate::conn::{BindKey, Dialect, WriteConnection};
use crate::counter::{Amounts, Counter};
use crate::error::{Error, Result};
use chrono::NaiveDateTime;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

/// The longest idempotency key, in bytes (UTF-8).
pub const MAX_KEY_LEN: usize = 255;

/// How many times a call claims its key again when the key's row vanished (was pruned) between
/// the claim and the read.
pub const KEY_ATTEMPTS: u32 = 3;

/// A ledger table: key, request fingerprint, stored result and creation instant columns.
///
/// Declare it with [`ledger!`](crate::ledger!); a derive can implement it the same way.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an idempotency ledger declaration",
    note = "declare it with `upsert_kit::ledger! {{ table = …, key = …, fingerprint = …, result = …, created_at = …; pub struct Name; }}`"
)]
pub trait Ledger {
    /// The Diesel table.
    type Table: diesel::Table + Default;
    /// The key column (`TEXT`, unique).
    const KEY: &'static str;
    /// The fingerprint column (`TEXT`).
    const FINGERPRINT: &'static str;
    /// The stored result column (`TEXT`, nullable).
    const RESULT: &'static str;
    /// The creation instant column (`TIMESTAMP`, UTC).
    const CREATED_AT: &'static str;
}

/// Writes a ledger's table into a statement (the declaration implements it).
pub trait BindLedger<DB: Dialect>: Ledger {
    /// Pushes the table's name.
    ///
    /// # Errors
    /// Never in practice (identifiers only).
    fn walk_table(out: AstPass<'_, '_, DB>) -> QueryResult<()>;
}

/// Declares an idempotency ledger table.
///
/// ```text
/// upsert_kit::ledger! {
///     table = schema::idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
///     pub struct Keys;
/// }
/// ```
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::RunQueryDsl;
/// use upsert_kit::idempotency::{run, IdempotencyKey};
/// upsert_kit::ledger! {
///     table = idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
///     pub struct Keys;
/// }
///
/// let mut conn = establish_sqlite()?;
/// let key = IdempotencyKey::new("order-42")?;
/// let now = chrono::Utc::now().naive_utc();
/// let first = run::<Keys, _, _, _>(&mut conn, &key, "sku=a-1", now, |conn| {
///     diesel::sql_query("INSERT INTO items (sku, name) VALUES ('a-1', 'first')").execute(conn)?;
///     Ok(serde_json::json!({ "order": 42 }))
/// })?;
/// let again = run::<Keys, _, _, _>(&mut conn, &key, "sku=a-1", now, |_| -> upsert_kit::Result<serde_json::Value> {
///     unreachable!("a repeat runs nothing")
/// })?;
/// assert!(first.applied && !again.applied);
/// assert_eq!(first.value, again.value);
/// let changed = run::<Keys, _, _, _>(&mut conn, &key, "sku=b-2", now, |_| Ok(serde_json::Value::Null));
/// assert!(matches!(changed, Err(upsert_kit::Error::IdempotencyConflict { .. })));
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! ledger {
    (
        table = $($tp:ident)::+ , key = $key:ident , fingerprint = $fp:ident ,
        result = $result:ident , created_at = $created:ident $(,)? ;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident;
    ) => {
        $(#[$meta])*
        $vis struct $name;

        const _: () = {
            impl $crate::idempotency::Ledger for $name {
                type Table = $($tp)::+::table;
                const KEY: &'static str = $crate::__private::column_name(&$($tp)::+::$key);
                const FINGERPRINT: &'static str = $crate::__private::column_name(&$($tp)::+::$fp);
                const RESULT: &'static str = $crate::__private::column_name(&$($tp)::+::$result);
                const CREATED_AT: &'static str = $crate::__private::column_name(&$($tp)::+::$created);
            }

            impl<DB> $crate::idempotency::BindLedger<DB> for $name
            where
                DB: $crate::conn::Dialect,
                $($tp)::+::table: $crate::__private::diesel::query_builder::QueryFragment<DB>,
            {
                fn walk_table(
                    out: $crate::__private::diesel::query_builder::AstPass<'_, '_, DB>,
                ) -> $crate::__private::diesel::QueryResult<()> {
                    $crate::__private::diesel::query_builder::QueryFragment::<DB>::walk_ast(
                        &$($tp)::+::table,
                        out,
                    )
                }
            }
        };
    };
}

/// An idempotency key: 1 to [`MAX_KEY_LEN`] bytes, not blank, no control characters.
///
/// ```
/// use upsert_kit::idempotency::IdempotencyKey;
/// assert!(IdempotencyKey::new("job-42:2026-12-01").is_ok());
/// assert!(IdempotencyKey::new(" ").is_err());
/// assert!(IdempotencyKey::new("x".repeat(256)).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks and wraps `key`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `idempotency_key`) when `key` is blank, longer than
    /// [`MAX_KEY_LEN`] bytes or contains a control character.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let field = "idempotency_key";
        if key.trim().is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "{} bytes is longer than the limit of {MAX_KEY_LEN}",
                    key.len()
                ),
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
        Ok(IdempotencyKey(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request's fingerprint: 64-bit FNV-1a of `bytes`, as 16 hex digits, stable across builds and
/// platforms. Any text identifying the request will do as a fingerprint; this one is short.
///
/// ```
/// use upsert_kit::idempotency::fingerprint;
/// assert_eq!(fingerprint(b"amount=5"), fingerprint(b"amount=5"));
/// assert_ne!(fingerprint(b"amount=5"), fingerprint(b"amount=6"));
/// assert_eq!(fingerprint(b"").len(), 16);
/// ```
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A result that can be stored in the ledger as text and read back.
///
/// Implemented for `serde_json::Value`, `String`, `i64`, `()` and `[i64; N]`. For a type of
/// your own, store it as a `serde_json::Value` (`serde_json::to_value`) or implement this trait.
pub trait StoredResult: Sized {
    /// The text stored.
    ///
    /// # Errors
    /// When the value cannot be written as text.
    fn to_stored(&self) -> Result<String>;
    /// The value back from its text.
    ///
    /// # Errors
    /// When the text is not what [`StoredResult::to_stored`] writes.
    fn from_stored(text: &str) -> Result<Self>;
}

fn stored_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Database(diesel::result::Error::DeserializationError(Box::new(e)))
}

impl StoredResult for serde_json::Value {
    fn to_stored(&self) -> Result<String> {
        Ok(self.to_string())
    }
    fn from_stored(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(stored_error)
    }
}

impl StoredResult for String {
    fn to_stored(&self) -> Result<String> {
        Ok(self.clone())
    }
    fn from_stored(text: &str) -> Result<Self> {
        Ok(text.to_owned())
    }
}

impl StoredResult for i64 {
    fn to_stored(&self) -> Result<String> {
        Ok(self.to_string())
    }
    fn from_stored(text: &str) -> Result<Self> {
        text.parse().map_err(stored_error)
    }
}

impl StoredResult for () {
    fn to_stored(&self) -> Result<String> {
        Ok(String::new())
    }
    fn from_stored(_: &str) -> Result<Self> {
        Ok(())
    }
}

impl<const N: usize> StoredResult for [i64; N] {
    fn to_stored(&self) -> Result<String> {
        serde_json::to_string(&self[..]).map_err(stored_error)
    }
    fn from_stored(text: &str) -> Result<Self> {
        let values = crate::conn::parse_ints(text)?;
        <[i64; N]>::from_slice(&values).ok_or_else(|| {
            stored_error(std::io::Error::other(format!(
                "expected {N} stored values, got {}",
                values.len()
            )))
        })
    }
}

/// What an idempotent call did, or, for a repeat of its key, what the first call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotent<T> {
    /// The result: this call's, or the stored one of the first call with the key.
    pub value: T,
    /// `true` for the call that ran the write, `false` for a repeat of its key.
    pub applied: bool,
}

/// Runs `f` once per `key`: the first call runs it in a transaction and stores its result with
/// the key; a repeat with the same `fingerprint` returns the stored result and runs nothing.
/// `at` is the instant recorded as the key's `created_at` (for [`prune`]).
///
/// `f` gets the transaction's connection; whatever it writes commits with the ledger row or not
/// at all. When `f` fails, everything is rolled back, the key is free again, and `f`'s error is
/// returned.
///
/// # Errors
/// - [`Error::IdempotencyConflict`]: the key was used with another fingerprint; nothing runs.
/// - [`Error::IdempotencyInFlight`]: the key's row holds no result (see the
///   [module documentation](self)).
/// - [`Error::Busy`] (SQLite): another writer held the database past the busy timeout;
///   nothing was applied, retry with the same key.
/// - [`Error::OutcomeUnknown`]: the connection dropped during `COMMIT`; retry with the same
///   key, it is applied at most once.
/// - `f`'s error.
///
/// # Examples
/// See [`ledger!`](crate::ledger!).
pub fn run<L, C, T, F>(
    conn: &mut C,
    key: &IdempotencyKey,
    fingerprint: &str,
    at: NaiveDateTime,
    f: F,
) -> Result<Idempotent<T>>
where
    L: BindLedger<C::Backend>,
    C: WriteConnection,
    T: StoredResult,
    F: FnOnce(&mut C::Raw) -> Result<T>,
{
    let mut f = Some(f);
    for _ in 0..KEY_ATTEMPTS {
        let nonce = fastrand::i64(1..);
        let outcome = conn.write(|c| {
            let claim: Sql<'_, L> = Sql::Claim {
                key: key.as_str(),
                fingerprint,
                at: &at,
                nonce: &nonce,
            };
            let claimed = if <C::Backend as Dialect>::RETURNING {
                !c.run_ints(&claim)?.is_empty()
            } else {
                // MySQL: the claim's update clause (run only when the key exists) stores the
                // nonce in @upsert_kit_hit.
                c.run_execute(&claim)?;
                let claimed: Sql<'_, L> = Sql::Claimed { nonce: &nonce };
                !c.run_ints(&claimed)?.is_empty()
            };
            if !claimed {
                return Ok(None);
            }
            let f = f
                .take()
                .expect("the write runs once: a claimed key commits or fails");
            let value = f(c)?;
            let stored = value.to_stored()?;
            let store: Sql<'_, L> = Sql::Store {
                key: key.as_str(),
                result: &stored,
            };
            c.run_execute(&store)?;
            Ok(Some(value))
        })?;
        if let Some(value) = outcome {
            return Ok(Idempotent {
                value,
                applied: true,
            });
        }
        if let Some(replayed) = replay::<L, C, T>(conn, key, fingerprint)? {
            return Ok(replayed);
        }
        tracing::debug!("idempotency key pruned while in use; claiming it again");
    }
    Err(vanished(key))
}

/// The stored result of a taken key, or `None` when its row is gone.
fn replay<L, C, T>(
    conn: &mut C,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Option<Idempotent<T>>>
where
    L: BindLedger<C::Backend>,
    C: WriteConnection,
    T: StoredResult,
{
    let read: Sql<'_, L> = Sql::Read { key: key.as_str() };
    let Some((stored_fingerprint, result)) = conn.raw().run_text_pairs(&read)?.into_iter().next()
    else {
        return Ok(None);
    };
    if stored_fingerprint != fingerprint {
        return Err(Error::IdempotencyConflict {
            key: key.as_str().to_owned(),
        });
    }
    let Some(result) = result else {
        return Err(Error::IdempotencyInFlight {
            key: key.as_str().to_owned(),
        });
    };
    Ok(Some(Idempotent {
        value: T::from_stored(&result)?,
        applied: false,
    }))
}

fn vanished(key: &IdempotencyKey) -> Error {
    Error::NotFound(format!(
        "idempotency key {:?}: its ledger row kept disappearing ({KEY_ATTEMPTS} attempts)",
        key.as_str()
    ))
}

/// Adds `amounts` to the counter row with `counter_key` (creating it on first use), once per
/// idempotency `key`; every call with the key returns the totals right after the first call's
/// increment.
///
/// The fingerprint is the counter key's and the amounts' `Debug` text: the same key with other
/// amounts (or another counter row) is [`Error::IdempotencyConflict`].
///
/// **Cost**: PostgreSQL, one statement (its own transaction; a savepoint inside the caller's),
/// one more read for a repeated key; SQLite, one immediate transaction.
///
/// # Errors
/// As [`run`] and [`upsert_increment`](crate::counter::upsert_increment).
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # upsert_kit::counter! {
/// #     table = api_calls, key = (user_id: i64, day: chrono::NaiveDate), amounts = (calls, bytes);
/// #     pub struct ApiCalls;
/// # }
/// # upsert_kit::ledger! {
/// #     table = idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
/// #     pub struct Keys;
/// # }
/// use upsert_kit::idempotency::{increment_once, IdempotencyKey};
/// let mut conn = establish_sqlite()?;
/// let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
/// let now = chrono::Utc::now().naive_utc();
/// let request = IdempotencyKey::new("request-1")?;
/// let first = increment_once::<Keys, ApiCalls, _>(&mut conn, &request, &(7, day), [1, 512], now)?;
/// let retry = increment_once::<Keys, ApiCalls, _>(&mut conn, &request, &(7, day), [1, 512], now)?;
/// assert!(first.applied && !retry.applied);
/// assert_eq!(retry.value, [1, 512]); // counted once
/// # Ok(()) }
/// ```
pub fn increment_once<L, T, C>(
    conn: &mut C,
    key: &IdempotencyKey,
    counter_key: &T::Key,
    amounts: T::Amounts,
    at: NaiveDateTime,
) -> Result<Idempotent<T::Amounts>>
where
    L: BindLedger<C::Backend>,
    T: Counter + BindKey<C::Backend>,
    T::Amounts: StoredResult,
    C: WriteConnection,
{
    T::validate_key(counter_key)?;
    let fp = fingerprint(format!("{counter_key:?}|{amounts:?}").as_bytes());
    if !<C::Backend as Dialect>::WRITABLE_CTE {
        return run::<L, C, _, _>(conn, key, &fp, at, |c| {
            crate::counter::upsert_increment::<T, _>(c, counter_key, amounts)
        });
    }
    for _ in 0..KEY_ATTEMPTS {
        let sql = KeyedIncrementSql::<L, T> {
            key: key.as_str(),
            fingerprint: &fp,
            at: &at,
            counter_key,
            amounts: amounts.as_slice(),
            _ledger: std::marker::PhantomData,
        };
        let raw = conn.raw();
        let in_tx = crate::tx::in_transaction(raw);
        let result = if in_tx {
            // A savepoint keeps a repeated key's unique violation from aborting the caller's
            // transaction.
            crate::tx::transaction(raw, |c| c.run_texts(&sql))
        } else {
            raw.run_texts(&sql)
        };
        match result {
            Ok(texts) => {
                let text = texts.first().ok_or_else(|| {
                    Error::NotFound("the keyed increment returned nothing".into())
                })?;
                return Ok(Idempotent {
                    value: T::Amounts::from_stored(text)?,
                    applied: true,
                });
            }
            Err(Error::Constraint {
                kind: crate::ConstraintKind::Unique,
                ..
            }) => {
                match replay::<L, C, T::Amounts>(conn, key, &fp)? {
                    Some(replayed) => return Ok(replayed),
                    // Not the ledger's key (another unique index of the counter), or pruned
                    // in between: try once more, and report the error if it stays.
                    None => {
                        tracing::debug!("keyed increment: unique violation without a ledger row");
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(vanished(key))
}

/// Deletes the ledger rows created before `older_than` and returns how many. A pruned key is
/// forgotten: a later call with it runs again.
///
/// # Errors
/// Database errors.
///
/// # Examples
///
/// ```
/// # include!("doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # upsert_kit::ledger! {
/// #     table = idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
/// #     pub struct Keys;
/// # }
/// use upsert_kit::idempotency::{prune, run, IdempotencyKey};
/// let mut conn = establish_sqlite()?;
/// let now = chrono::Utc::now().naive_utc();
/// run::<Keys, _, _, _>(&mut conn, &IdempotencyKey::new("k")?, "", now, |_| Ok(()))?;
/// assert_eq!(prune::<Keys, _>(&mut conn, now - chrono::Duration::days(7))?, 0);
/// assert_eq!(prune::<Keys, _>(&mut conn, now + chrono::Duration::seconds(1))?, 1);
/// # Ok(()) }
/// ```
pub fn prune<L, C>(conn: &mut C, older_than: NaiveDateTime) -> Result<usize>
where
    L: BindLedger<C::Backend>,
    C: WriteConnection,
{
    let sql: Sql<'_, L> = Sql::Prune {
        older_than: &older_than,
    };
    conn.single(|c| c.run_execute(&sql))
}

/// The ledger statements.
enum Sql<'a, L> {
    /// `INSERT INTO l (key, fingerprint, result, created_at) VALUES ($1, $2, NULL, $3)
    /// ON CONFLICT (key) DO NOTHING RETURNING 1`; on MySQL (no `RETURNING`, and not
    /// `INSERT IGNORE`, which turns other errors into warnings) `… ON DUPLICATE KEY UPDATE
    /// key = IF((@upsert_kit_hit := $nonce) IS NULL, key, key)`, which changes nothing.
    Claim {
        key: &'a str,
        fingerprint: &'a str,
        at: &'a NaiveDateTime,
        nonce: &'a i64,
    },
    /// MySQL: one row when the claim inserted (`@upsert_kit_hit` is not its nonce).
    Claimed { nonce: &'a i64 },
    /// `UPDATE l SET result = $1 WHERE key = $2`.
    Store { key: &'a str, result: &'a str },
    /// `SELECT fingerprint, result FROM l WHERE key = $1` (`LOCK IN SHARE MODE` on MySQL).
    Read { key: &'a str },
    /// `DELETE FROM l WHERE created_at < $1`.
    Prune { older_than: &'a NaiveDateTime },
    #[allow(dead_code)]
    Never(std::marker::PhantomData<L>),
}

impl<L, DB> QueryFragment<DB> for Sql<'_, L>
where
    L: BindLedger<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        match self {
            Sql::Claim {
                key,
                fingerprint,
                at,
                nonce,
            } => {
                out.push_sql("INSERT INTO ");
                L::walk_table(out.reborrow())?;
                out.push_sql(" (");
                crate::upsert::statement::push_identifiers(
                    &mut out,
                    &[L::KEY, L::FINGERPRINT, L::RESULT, L::CREATED_AT],
                )?;
                out.push_sql(") VALUES (");
                DB::push_text(&mut out, key)?;
                out.push_sql(", ");
                DB::push_text(&mut out, fingerprint)?;
                out.push_sql(", NULL, ");
                DB::push_timestamp(&mut out, at)?;
                if !DB::RETURNING {
                    out.push_sql(")");
                    DB::push_on_conflict_update(&mut out, &[L::KEY])?;
                    out.push_identifier(L::KEY)?;
                    out.push_sql(" = IF((@upsert_kit_hit := ");
                    DB::push_int(&mut out, nonce)?;
                    out.push_sql(") IS NULL, ");
                    out.push_identifier(L::KEY)?;
                    out.push_sql(", ");
                    out.push_identifier(L::KEY)?;
                    out.push_sql(")");
                    return Ok(());
                }
                out.push_sql(") ON CONFLICT (");
                out.push_identifier(L::KEY)?;
                out.push_sql(") DO NOTHING RETURNING CAST(1 AS BIGINT)");
                Ok(())
            }
            Sql::Claimed { nonce } => {
                out.push_sql(
                    "SELECT CAST(1 AS SIGNED) FROM DUAL WHERE NOT COALESCE(@upsert_kit_hit = ",
                );
                DB::push_int(&mut out, nonce)?;
                out.push_sql(", FALSE)");
                Ok(())
            }
            Sql::Store { key, result } => {
                out.push_sql("UPDATE ");
                L::walk_table(out.reborrow())?;
                out.push_sql(" SET ");
                out.push_identifier(L::RESULT)?;
                out.push_sql(" = ");
                DB::push_text(&mut out, result)?;
                out.push_sql(" WHERE ");
                out.push_identifier(L::KEY)?;
                out.push_sql(" = ");
                DB::push_text(&mut out, key)
            }
            Sql::Read { key } => {
                out.push_sql("SELECT ");
                crate::upsert::statement::push_identifiers(&mut out, &[L::FINGERPRINT, L::RESULT])?;
                out.push_sql(" FROM ");
                L::walk_table(out.reborrow())?;
                out.push_sql(" WHERE ");
                out.push_identifier(L::KEY)?;
                out.push_sql(" = ");
                DB::push_text(&mut out, key)?;
                if !DB::RETURNING {
                    // MySQL: a locking read sees the newest committed row, also inside a
                    // REPEATABLE READ transaction whose snapshot predates it.
                    out.push_sql(" LOCK IN SHARE MODE");
                }
                Ok(())
            }
            Sql::Prune { older_than } => {
                out.push_sql("DELETE FROM ");
                L::walk_table(out.reborrow())?;
                out.push_sql(" WHERE ");
                out.push_identifier(L::CREATED_AT)?;
                out.push_sql(" < ");
                DB::push_timestamp(&mut out, older_than)
            }
            Sql::Never(_) => Ok(()),
        }
    }
}

/// PostgreSQL: `WITH up AS (<upsert increment> RETURNING totals AS t) INSERT INTO l (key,
/// fingerprint, result, created_at) SELECT $k, $f, up.t, $at FROM up RETURNING result`.
struct KeyedIncrementSql<'a, L, T: Counter> {
    key: &'a str,
    fingerprint: &'a str,
    at: &'a NaiveDateTime,
    counter_key: &'a T::Key,
    amounts: &'a [i64],
    #[allow(dead_code)]
    _ledger: std::marker::PhantomData<L>,
}

impl<L, T, DB> QueryFragment<DB> for KeyedIncrementSql<'_, L, T>
where
    L: BindLedger<DB>,
    T: Counter + BindKey<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("WITH __kit_up (__kit_totals) AS (");
        crate::counter::upsert_increment_sql::<T, DB>(&mut out, self.counter_key, self.amounts)?;
        out.push_sql(") INSERT INTO ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" (");
        crate::upsert::statement::push_identifiers(
            &mut out,
            &[L::KEY, L::FINGERPRINT, L::RESULT, L::CREATED_AT],
        )?;
        out.push_sql(") SELECT ");
        DB::push_text(&mut out, self.key)?;
        out.push_sql(", ");
        DB::push_text(&mut out, self.fingerprint)?;
        out.push_sql(", __kit_totals, ");
        DB::push_timestamp(&mut out, self.at)?;
        out.push_sql(" FROM __kit_up RETURNING ");
        out.push_identifier(L::RESULT)
    }
}

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
//! [`Record`] is an idempotent increment recorded in a ledger of increments
//! ([`IncrementLedger`]): typed columns instead of a text result (the key within a scope such
//! as an account, a `BIGINT` fingerprint, the amounts, the totals after, columns of the counter
//! row such as its id), written by the same one statement on PostgreSQL, and returned as the
//! caller's own struct ([`ReturnRow`]). A missing counter row is created or reported (`None`),
//! as the caller chooses.
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
//!
//! This file holds the API, its contract and the statements every backend shares; how each
//! backend claims a key and runs a keyed increment ([`IdempotencyBackend`]) is in a file of its
//! own beside it: `pg.rs`, `sqlite.rs`, `mysql.rs`.

use crate::conn::{BindKey, Dialect, KeyStyle, Keyed, WriteConnection};
use crate::counter::{Amounts, Counter, CounterBackend};
use crate::declare::{Output, Returned};
use crate::error::{Error, Result};
use crate::observe;
use chrono::NaiveDateTime;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use crate::declare::ReturnRow;

/// The longest idempotency key, in bytes (UTF-8).
pub const MAX_KEY_LEN: usize = 255;

/// How many times in all a call claims its key when the key's row vanished (was pruned) between
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
/// That form declares a [`Ledger`], whose rows store each call's result as text ([`run`],
/// [`increment_once`]). The second form declares a ledger of counter increments
/// ([`IncrementLedger`], for [`Record`]), whose rows record each increment in typed columns:
///
/// ```text
/// upsert_kit::ledger! {
///     table = usage_log, scope = (account: i64), key = request, fingerprint = request_hash: i64,
///     created_at = logged_at, amounts = (tokens, calls), totals = (tokens_after, calls_after),
///     row = usage(usage_id = id);
///     pub struct UsageLog;
/// }
/// ```
///
/// - `scope = (column: Type, …)` (optional): columns that make the ledger's unique key with
///   the idempotency key (keys are then unique per account, say).
/// - `fingerprint = column: Type`: `i64` for a `BIGINT` column, `String` for a `TEXT` one.
/// - `amounts = (…)` (optional): the columns recording the amounts added, one per amount column
///   of the counter; `totals = (…)`: the columns recording the counter's totals after.
/// - `row = counter_table(ledger_column = counter_column, …)` (optional): columns copied from
///   the counter row; the ledger then records that table's counters only.
///
/// See [`Record`] for an example.
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
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
    // A ledger of counter increments (see `IncrementLedger`).
    (
        table = $($tp:ident)::+ ,
        $( scope = ( $( $scope:ident : $sty:ty ),+ $(,)? ) , )?
        key = $key:ident , fingerprint = $fp:ident : $fty:ty , created_at = $created:ident ,
        $( amounts = ( $( $amount:ident ),+ $(,)? ) , )?
        totals = ( $( $total:ident ),+ $(,)? )
        $( , row = $($ctp:ident)::+ ( $( $rl:ident = $rc:ident ),+ $(,)? ) )? $(,)? ;
        $(#[$meta:meta])*
        $vis:vis struct $name:ident;
    ) => {
        $(#[$meta])*
        $vis struct $name;

        $crate::ledger!(@scope $name [$($tp)::+] [$($( $scope : $sty ),+)?]);

        const _: () = {
            #[allow(unused_imports)]
            use $crate::__private::{
                CheckOption as _, CheckValue as _, NoCheck as _, NotOnMysql as _, NotOnPg as _,
                NotOnSqlite as _,
            };

            impl $crate::idempotency::IncrementLedger for $name {
                type Fingerprint = $fty;
                const IDEMPOTENCY_KEY: &'static str = $crate::__private::column_name(&$($tp)::+::$key);
                const FINGERPRINT: &'static str = $crate::__private::column_name(&$($tp)::+::$fp);
                const CREATED_AT: &'static str = $crate::__private::column_name(&$($tp)::+::$created);
                const AMOUNTS: &'static [&'static str] =
                    $crate::__column_names!([$($tp)::+] $($($amount),+)?);
                const TOTALS: &'static [&'static str] =
                    $crate::__column_names!([$($tp)::+] $($total),+);
                $crate::ledger!(@row [$($tp)::+] [$($($ctp)::+)?] [$($( $rl = $rc ),+)?]);
            }
            $crate::ledger!(@records $name [$($($ctp)::+)?]);

            // The fingerprint's type can be written to its column.
            const _: () = assert!(
                $crate::__fits!($fty, $crate::__sql_type!([$($tp)::+] $fp)),
                concat!("the fingerprint's type `", stringify!($fty), "` cannot be written to the column `", stringify!($fp), "`")
            );
        };
    };
    (@scope $name:ident $table:tt [$( $scope:ident : $sty:ty ),*]) => {
        $crate::__keyed_impl!(@table $table, $name, $($scope : $sty),*);
    };
    (@row $table:tt [] []) => {
        const ROW: &'static [(&'static str, &'static str)] = &[];
    };
    (@row $table:tt $counter:tt [$( $rl:ident = $rc:ident ),+]) => {
        const ROW: &'static [(&'static str, &'static str)] = &[$((
            $crate::__private::column_name(&$crate::__column!($table $rl)),
            $crate::__private::column_name(&$crate::__column!($counter $rc)),
        )),+];
    };
    (@records $name:ident []) => {
        impl<T: $crate::counter::Counter> $crate::idempotency::Records<T> for $name {}
    };
    (@records $name:ident [$($ctp:ident)::+]) => {
        impl<T> $crate::idempotency::Records<T> for $name
        where
            T: $crate::counter::Counter + $crate::conn::Keyed<Table = $($ctp)::+::table>,
        {
        }
    };
}

/// A ledger of counter increments: each row records one idempotent increment of a counter
/// ([`Record`]) in typed columns of its own, written by the same statement as the increment:
/// the idempotency key (unique within the row's scope), the request's fingerprint (a `BIGINT`
/// or a `TEXT`), when it was applied, the amounts added, the counter's totals right after, and
/// columns copied from the counter row (its id, say). A repeat of the key returns the row as
/// the first call wrote it.
///
/// Declare it with the second form of [`ledger!`](crate::ledger!). Its [`Keyed`] key is the
/// scope: the columns that, with the idempotency key, make the ledger's unique key (`()` when
/// keys are unique on their own).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a ledger of counter increments",
    note = "declare it with `upsert_kit::ledger! {{ table = …, [scope = (col: Type, …),] key = …, fingerprint = col: Type, created_at = …, [amounts = (…),] totals = (…) [, row = counter_table(ledger_col = counter_col, …)]; pub struct Name; }}`"
)]
pub trait IncrementLedger: Keyed {
    /// The fingerprint's Rust type: `i64` (a `BIGINT` column) or `String` (`TEXT`).
    type Fingerprint: FingerprintValue;
    /// The idempotency key column (`TEXT`): unique together with the scope's columns.
    const IDEMPOTENCY_KEY: &'static str;
    /// The fingerprint column: a repeat whose fingerprint differs is a conflict.
    const FINGERPRINT: &'static str;
    /// The instant the increment was applied (`TIMESTAMP`, UTC).
    const CREATED_AT: &'static str;
    /// The columns that record the amounts added, one per amount column of the counter, or none
    /// (`&[]`). A repeat whose amounts differ is a conflict.
    const AMOUNTS: &'static [&'static str];
    /// The columns that record the counter's totals right after the increment, one per amount
    /// column of the counter.
    const TOTALS: &'static [&'static str];
    /// Columns copied from the counter row: `(ledger column, counter column)`.
    const ROW: &'static [(&'static str, &'static str)];
}

/// Says that a ledger of increments records increments of the counter `T`: every ledger of
/// increments records any counter, except one whose `row = …` copies columns of a counter
/// table, which records that table's counters only. The declaration implements it.
#[diagnostic::on_unimplemented(
    message = "the ledger `{Self}` does not record increments of `{T}`",
    note = "its `row = table(…)` names another counter table than `{T}`'s"
)]
pub trait Records<T: Counter>: IncrementLedger {}

/// A fingerprint a ledger of increments stores: `i64` (a `BIGINT` column) or `String` (`TEXT`).
/// Sealed.
pub trait FingerprintValue: std::fmt::Debug + sealed::Sealed {
    /// Pushes the value as a bind parameter.
    #[doc(hidden)]
    fn push<'b, DB: Dialect>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

impl FingerprintValue for i64 {
    fn push<'b, DB: Dialect>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        DB::push_int(out, self)
    }
}

impl FingerprintValue for String {
    fn push<'b, DB: Dialect>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        DB::push_text(out, self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i64 {}
    impl Sealed for String {}
}

/// An idempotency key: 1 to [`MAX_KEY_LEN`] bytes, not blank, no control characters.
///
/// ```
/// use upsert_kit::idempotency::IdempotencyKey;
/// assert!(IdempotencyKey::new("job-42:2026-12-01").is_ok());
/// assert!(IdempotencyKey::new(" ").is_err());
/// assert!(IdempotencyKey::new("x".repeat(256)).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Keys may be secrets: `Debug` shows the key's length, never the key.
impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdempotencyKey({} bytes)", self.0.len())
    }
}

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
/// Give it the request's payload (the body as received), so that a changed payload under the
/// same key is told apart ([`run`]); for a JSON payload see [`fingerprint_json`].
///
/// ```
/// use upsert_kit::idempotency::fingerprint;
/// assert_eq!(fingerprint(b"amount=5"), fingerprint(b"amount=5"));
/// assert_ne!(fingerprint(b"amount=5"), fingerprint(b"amount=6"));
/// assert_eq!(fingerprint(b"").len(), 16);
/// ```
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut hash = Fnv::new();
    hash.feed(bytes);
    hash.hex()
}

/// The fingerprint of a JSON payload: [`fingerprint`] of its compact text with every object's
/// keys in order, so equal values (`==`) have equal fingerprints whatever the order their keys
/// were written or parsed in, also when serde_json's `preserve_order` feature is on. Array
/// order counts, and `1` and `1.0` differ, as they do for `==`.
///
/// A payload of your own type: `fingerprint_json(&serde_json::to_value(&request)?)`.
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use upsert_kit::idempotency::{fingerprint, fingerprint_json, run, IdempotencyKey};
/// upsert_kit::ledger! {
///     table = idempotency_keys, key = key, fingerprint = fingerprint, result = result, created_at = created_at;
///     pub struct Keys;
/// }
///
/// let order = json!({ "sku": "a-1", "qty": 2 });
/// let retried = json!({ "qty": 2, "sku": "a-1" }); // the same order, its keys sent in another order
/// assert_eq!(fingerprint_json(&order), fingerprint_json(&retried));
/// assert_eq!(fingerprint_json(&order), fingerprint(br#"{"qty":2,"sku":"a-1"}"#));
///
/// let mut conn = establish_sqlite()?;
/// let key = IdempotencyKey::new("order-42")?;
/// let now = chrono::Utc::now().naive_utc();
/// let first = run::<Keys, _, _, _>(&mut conn, &key, &fingerprint_json(&order), now, |_| Ok(42_i64))?;
/// let again = run::<Keys, _, _, _>(&mut conn, &key, &fingerprint_json(&retried), now, |_| Ok(0_i64))?;
/// assert!(first.applied && !again.applied);
/// let changed = json!({ "sku": "a-1", "qty": 3 });
/// let refused = run::<Keys, _, _, _>(&mut conn, &key, &fingerprint_json(&changed), now, |_| Ok(0_i64));
/// assert!(matches!(refused, Err(upsert_kit::Error::IdempotencyConflict { .. })));
/// # Ok(()) }
/// ```
pub fn fingerprint_json(payload: &serde_json::Value) -> String {
    let mut hash = Fnv::new();
    hash.feed_json(payload);
    hash.hex()
}

/// 64-bit FNV-1a, fed bytes or a JSON value's canonical text.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn feed(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// `value`'s compact JSON text, objects' keys in order, as serde_json writes a value whose
    /// maps are sorted.
    fn feed_json(&mut self, value: &serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                self.feed(b"{");
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        self.feed(b",");
                    }
                    // Writing into the hash cannot fail.
                    let _ = serde_json::to_writer(&mut *self, key.as_str());
                    self.feed(b":");
                    self.feed_json(value);
                }
                self.feed(b"}");
            }
            Value::Array(items) => {
                self.feed(b"[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.feed(b",");
                    }
                    self.feed_json(item);
                }
                self.feed(b"]");
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *self, scalar);
            }
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl std::io::Write for Fnv {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.feed(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
/// **The fingerprint must cover the payload.** A repeat is judged by its fingerprint alone,
/// never by the payload: a repeat whose fingerprint differs is
/// [`Error::IdempotencyConflict`], one whose fingerprint is the same gets the first call's
/// result *even if its payload differs*. So make the fingerprint from everything the write
/// depends on, in one line: `&fingerprint_json(&payload)` for a JSON payload
/// ([`fingerprint_json`]: key order does not count), `&fingerprint(&body)` for the bytes of a
/// request body ([`fingerprint`]). A constant (`""`) turns the conflict check off.
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
    C::Backend: IdempotencyBackend,
    T: StoredResult,
    F: FnOnce(&mut C::Raw) -> Result<T>,
{
    let table = observe::table_name::<L::Table>;
    observe::call!(C::Backend::SYSTEM, "idempotent_run", table).run(|call| {
        told(
            call,
            run_unobserved::<L, C, T, F>(conn, key, fingerprint, at, f),
        )
    })
}

/// What a call with an idempotency key tells its span and metrics: applied or replayed (a
/// replay counted in `upsert_kit_idempotency_replays_total`), a key in flight counted in
/// `upsert_kit_idempotency_in_flight_total`.
fn told<T>(call: &observe::Call, done: Result<Idempotent<T>>) -> Result<Idempotent<T>> {
    match &done {
        Ok(Idempotent { applied: true, .. }) => call.outcome("applied"),
        Ok(Idempotent { applied: false, .. }) => {
            call.outcome("replayed");
            call.count("upsert_kit_idempotency_replays_total", 1);
        }
        Err(Error::IdempotencyInFlight { .. }) => {
            call.count("upsert_kit_idempotency_in_flight_total", 1)
        }
        Err(_) => {}
    }
    done
}

fn run_unobserved<L, C, T, F>(
    conn: &mut C,
    key: &IdempotencyKey,
    fingerprint: &str,
    at: NaiveDateTime,
    f: F,
) -> Result<Idempotent<T>>
where
    L: BindLedger<C::Backend>,
    C: WriteConnection,
    C::Backend: IdempotencyBackend,
    T: StoredResult,
    F: FnOnce(&mut C::Raw) -> Result<T>,
{
    let mut f = Some(f);
    for _ in 0..KEY_ATTEMPTS {
        let outcome = conn.write(|c| {
            if !C::Backend::claim::<L, _>(c, key.as_str(), fingerprint, &at)? {
                return Ok(None);
            }
            let f = f
                .take()
                .expect("the write runs once: a claimed key commits or fails");
            let value = f(c)?;
            let stored = value.to_stored()?;
            let store = StoreSql::<L> {
                key: key.as_str(),
                result: &stored,
                _ledger: std::marker::PhantomData,
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
    Err(vanished())
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
    C::Backend: IdempotencyBackend,
    T: StoredResult,
{
    let read = ReadSql::<L> {
        key: key.as_str(),
        _ledger: std::marker::PhantomData,
    };
    let Some((stored_fingerprint, result)) = conn.raw().run_text_pairs(&read)?.into_iter().next()
    else {
        return Ok(None);
    };
    if stored_fingerprint != fingerprint {
        return Err(Error::IdempotencyConflict {
            key: crate::redact::Redacted::new(key.as_str().to_owned()),
        });
    }
    let Some(result) = result else {
        return Err(Error::IdempotencyInFlight {
            key: crate::redact::Redacted::new(key.as_str().to_owned()),
        });
    };
    Ok(Some(Idempotent {
        value: T::from_stored(&result)?,
        applied: false,
    }))
}

/// The key's ledger row was pruned under every attempt. The message does not name the key (a
/// key may be a secret).
fn vanished() -> Error {
    Error::NotFound(format!(
        "an idempotency key's ledger row kept disappearing ({KEY_ATTEMPTS} attempts)"
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
/// one more read for a repeated key; SQLite, one immediate transaction; MySQL/MariaDB, one
/// transaction ([`run`] around the increment).
///
/// # Errors
/// As [`run`] and [`upsert_increment`](crate::counter::upsert_increment).
///
/// # Examples
///
/// ```
/// # include!("../doctest_setup.rs");
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
    C::Backend: IdempotencyBackend,
{
    let table = observe::table_name::<T::Table>;
    observe::call!(C::Backend::SYSTEM, "increment_once", table).run(|call| {
        T::validate_key(counter_key)?;
        let fp = fingerprint(format!("{counter_key:?}|{amounts:?}").as_bytes());
        let done = <C::Backend as IdempotencyBackend>::increment_once::<L, T, C>(
            conn,
            key,
            &fp,
            counter_key,
            amounts,
            at,
        );
        told(call, done)
    })
}

/// An increment of a counter row recorded once per idempotency key in a ledger of increments
/// ([`IncrementLedger`]): the counter change and the ledger row commit together, and every call
/// with the key returns the ledger row as the first call wrote it, as the caller's own struct.
///
/// Built with [`Record::new`]; by default a missing counter row is not created (`run` returns
/// `Ok(None)`, nothing written); [`Record::creating`] creates it.
///
/// # The statements
/// - PostgreSQL, **one statement** (its own transaction; a savepoint inside the caller's):
///   `WITH __kit_up AS (UPDATE counter SET a = a + $1, … WHERE key RETURNING a, …, <row
///   columns>) INSERT INTO ledger (<scope>, key, fingerprint, created_at, <amounts>,
///   <totals>, <row>) SELECT $…, __kit_up.a, …, __kit_up.<column> FROM __kit_up RETURNING
///   <R>` (with [`Record::creating`], the `WITH` step is the counter's `INSERT … ON CONFLICT DO
///   UPDATE`). A repeated key makes the insert fail with a unique violation, which undoes the
///   whole statement, counter change included; the ledger row is then read. No counter row:
///   nothing is updated, nothing inserted.
/// - SQLite (in one `BEGIN IMMEDIATE` transaction) and MySQL/MariaDB (one transaction): the
///   counter's increment, then `INSERT INTO ledger … SELECT …, counter.a, … FROM counter WHERE
///   key`; a repeated key's unique violation rolls both back. MySQL reads the new row back.
///
/// A repeat (the key in the ledger, within its scope) with the same fingerprint and, where the
/// ledger records them, the same amounts returns the stored row and writes nothing (`applied:
/// false`); another fingerprint or other amounts is [`Error::IdempotencyConflict`]. The
/// counter key is not compared: a repeat is recognised by its key alone.
///
/// **Locks** (PostgreSQL, READ COMMITTED): the counter row, then the key's unique-index entry,
/// in this order in every call: keyed increments cannot deadlock one another.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use upsert_kit::idempotency::{IdempotencyKey, Record};
///
/// diesel::table! {
///     usage (id) { id -> BigInt, account -> BigInt, day -> Date, tokens -> BigInt, calls -> BigInt, }
/// }
/// diesel::table! {
///     usage_log (id) {
///         id -> BigInt, account -> BigInt, request -> Text, request_hash -> BigInt,
///         tokens -> BigInt, calls -> BigInt, tokens_after -> BigInt, calls_after -> BigInt,
///         usage_id -> BigInt, logged_at -> Timestamp,
///     }
/// }
/// upsert_kit::counter! {
///     table = usage, key = (account: i64, day: chrono::NaiveDate), amounts = (tokens, calls);
///     pub struct Usage;
/// }
/// upsert_kit::ledger! {
///     table = usage_log, scope = (account: i64), key = request, fingerprint = request_hash: i64,
///     created_at = logged_at, amounts = (tokens, calls), totals = (tokens_after, calls_after),
///     row = usage(usage_id = id);
///     pub struct UsageLog;
/// }
///
/// /// What a call returns: the ledger row as its first call wrote it.
/// #[derive(Debug, PartialEq, Queryable, Selectable)]
/// #[diesel(table_name = usage_log)]
/// struct Logged { id: i64, usage_id: i64, tokens_after: i64, calls_after: i64 }
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// conn.batch_execute(
///     "CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
///          day DATE NOT NULL, tokens BIGINT NOT NULL DEFAULT 0, calls BIGINT NOT NULL DEFAULT 0,
///          UNIQUE (account, day));
///      CREATE TABLE usage_log (id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
///          request TEXT NOT NULL, request_hash BIGINT NOT NULL, tokens BIGINT NOT NULL,
///          calls BIGINT NOT NULL, tokens_after BIGINT NOT NULL, calls_after BIGINT NOT NULL,
///          usage_id BIGINT NOT NULL, logged_at TIMESTAMP NOT NULL, UNIQUE (account, request));",
/// )?;
/// let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
/// let now = day.and_hms_opt(9, 0, 0).unwrap();
/// let key = IdempotencyKey::new("request-1")?;
///
/// let first = Record::<UsageLog, Usage>::new(&7, &key, &42, &(7, day), [120, 1], now)
///     .creating()
///     .run::<Logged, _>(&mut conn)?
///     .expect("created");
/// let again = Record::<UsageLog, Usage>::new(&7, &key, &42, &(7, day), [120, 1], now)
///     .creating()
///     .run::<Logged, _>(&mut conn)?
///     .expect("replayed");
/// assert!(first.applied && !again.applied);
/// assert_eq!(first.value, again.value);
/// assert_eq!((again.value.tokens_after, again.value.calls_after), (120, 1)); // counted once
///
/// // The same key with other amounts is refused; another account's key is its own.
/// let other = Record::<UsageLog, Usage>::new(&7, &key, &42, &(7, day), [5, 1], now).run::<Logged, _>(&mut conn);
/// assert!(matches!(other, Err(upsert_kit::Error::IdempotencyConflict { .. })));
/// // Without `creating`, a missing counter row is `None`, and nothing is written.
/// let missing = Record::<UsageLog, Usage>::new(&8, &key, &42, &(8, day), [5, 1], now).run::<Logged, _>(&mut conn)?;
/// assert_eq!(missing, None);
/// # Ok(()) }
/// ```
#[must_use = "a record does nothing until it is `run`"]
pub struct Record<'a, L: IncrementLedger, T: Counter> {
    scope: &'a L::Key,
    key: &'a IdempotencyKey,
    fingerprint: &'a L::Fingerprint,
    counter_key: &'a T::Key,
    amounts: T::Amounts,
    at: NaiveDateTime,
    create: bool,
}

impl<L: IncrementLedger, T: Counter> std::fmt::Debug for Record<'_, L, T> {
    /// The key and the fingerprint are left out: an idempotency key may be a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("ledger", &std::any::type_name::<L>())
            .field("counter", &std::any::type_name::<T>())
            .field("amounts", &self.amounts)
            .field("at", &self.at)
            .field("create", &self.create)
            .finish_non_exhaustive()
    }
}

impl<'a, L: IncrementLedger, T: Counter> Record<'a, L, T> {
    /// Adds `amounts` to the counter row with `counter_key`, once per idempotency `key` within
    /// `scope` (the ledger's scope columns' values; `&()` for a ledger without scope); the
    /// ledger row records `fingerprint`, `at` (its `created_at`), the amounts, the totals after
    /// and the counter row's copied columns.
    pub fn new(
        scope: &'a L::Key,
        key: &'a IdempotencyKey,
        fingerprint: &'a L::Fingerprint,
        counter_key: &'a T::Key,
        amounts: T::Amounts,
        at: NaiveDateTime,
    ) -> Self {
        Record {
            scope,
            key,
            fingerprint,
            counter_key,
            amounts,
            at,
            create: false,
        }
    }

    /// Creates the counter row (its key and the amounts, its other columns at their defaults)
    /// when it is missing, in the same statement. Default: a missing row is not created.
    pub fn creating(mut self) -> Self {
        self.create = true;
        self
    }

    /// Runs the increment: the ledger row as `R` (a `#[derive(Queryable, Selectable)]` struct
    /// of the ledger table), this call's (`applied: true`) or the first call's with the key;
    /// `Ok(None)` when the counter row does not exist (and was not created), nothing written.
    ///
    /// # Errors
    /// - [`Error::InvalidInput`]: a rejected scope or counter key, or a declaration whose
    ///   amounts or totals do not match the counter's amount columns; nothing is sent.
    /// - [`Error::IdempotencyConflict`]: the key was used with another fingerprint or other
    ///   amounts; nothing written.
    /// - [`Error::Constraint`]: another unique index of the ledger or the counter refused the
    ///   row, and the key is not in the ledger.
    /// - [`Error::OutcomeUnknown`] (the connection lost while the statement committed on its
    ///   own), [`Error::ConnectionLost`], [`Error::Busy`]: retry with the same key; the
    ///   increment is applied at most once.
    pub fn run<R, C>(self, conn: &mut C) -> Result<Option<Idempotent<R>>>
    where
        L: Records<T> + BindKey<C::Backend>,
        T: BindKey<C::Backend>,
        C: WriteConnection,
        C::Backend: IdempotencyBackend,
        R: ReturnRow<C::Raw>,
    {
        let table = observe::table_name::<T::Table>;
        observe::call!(C::Backend::SYSTEM, "record_increment", table).run(|call| {
            match self.run_unobserved::<R, C>(conn) {
                Ok(None) => {
                    call.outcome("missing");
                    Ok(None)
                }
                Ok(Some(done)) => told(call, Ok(done)).map(Some),
                Err(e) => told(call, Err(e)).map(Some),
            }
        })
    }

    fn run_unobserved<R, C>(self, conn: &mut C) -> Result<Option<Idempotent<R>>>
    where
        L: Records<T> + BindKey<C::Backend>,
        T: BindKey<C::Backend>,
        C: WriteConnection,
        C::Backend: IdempotencyBackend,
        R: ReturnRow<C::Raw>,
    {
        L::validate_key(self.scope)?;
        T::validate_key(self.counter_key)?;
        let n = T::AMOUNTS.len();
        if L::TOTALS.len() != n || !(L::AMOUNTS.is_empty() || L::AMOUNTS.len() == n) {
            return Err(Error::invalid(
                "ledger",
                "its amounts and totals must match the counter's amount columns, one for one",
            ));
        }
        let out = Returned::<R, C::Raw>::new();
        let mut violation = None;
        for _ in 0..KEY_ATTEMPTS {
            match C::Backend::record_once::<L, T, C, _>(conn, &self, &out)? {
                Recorded::Applied(row) => {
                    return Ok(Some(Idempotent {
                        value: row,
                        applied: true,
                    }))
                }
                Recorded::NoRow => return Ok(None),
                Recorded::Taken(e) => {
                    let raw = conn.raw();
                    let replay = ReadRecordSql::<L, T, C::Backend> {
                        rec: &self,
                        columns: out.columns(),
                        request: true,
                    };
                    if let Some(row) = out.load(raw, &replay)?.into_iter().next() {
                        return Ok(Some(Idempotent {
                            value: row,
                            applied: false,
                        }));
                    }
                    let taken = ReadRecordSql::<L, T, C::Backend> {
                        rec: &self,
                        columns: &KeyColumn::<L>(std::marker::PhantomData),
                        request: false,
                    };
                    if !raw.run_texts(&taken)?.is_empty() {
                        return Err(Error::IdempotencyConflict {
                            key: crate::redact::Redacted::new(self.key.as_str().to_owned()),
                        });
                    }
                    // Not the ledger's key (another unique index), or pruned in between: try
                    // again, and report the violation if it stays.
                    tracing::debug!("recorded increment: unique violation without a ledger row");
                    violation = Some(e);
                }
            }
        }
        Err(violation.unwrap_or_else(|| {
            Error::NotFound(format!(
                "an idempotency key's ledger row kept disappearing ({KEY_ATTEMPTS} attempts)"
            ))
        }))
    }
}

/// What one try of a [`Record`] did.
#[doc(hidden)]
#[derive(Debug)]
pub enum Recorded<R> {
    /// The counter changed and the ledger row was written: the row.
    Applied(R),
    /// No counter row (and none created): nothing was written.
    NoRow,
    /// A unique violation undid the try: the key is taken (or another unique index refused).
    Taken(Error),
}

impl<R> Recorded<R> {
    /// A try's result: a unique violation is [`Recorded::Taken`].
    fn of(result: Result<Recorded<R>>) -> Result<Recorded<R>> {
        match result {
            Err(
                e @ Error::Constraint {
                    kind: crate::error::ConstraintKind::Unique,
                    ..
                },
            ) => Ok(Recorded::Taken(e)),
            other => other,
        }
    }
}

/// The counter step of a [`Record`] written in steps (SQLite, MySQL), in `c`'s transaction:
/// the counter's increment; `false` when there is no counter row. The ledger row is then
/// [`RecordSql`] from the counter table.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn counted<L, T, C>(c: &mut C, rec: &Record<'_, L, T>) -> Result<bool>
where
    L: IncrementLedger,
    T: Counter + BindKey<C::Backend>,
    C: WriteConnection,
    C::Backend: CounterBackend,
{
    let mut increment = crate::counter::Increment::<T>::new(rec.counter_key, rec.amounts);
    if rec.create {
        increment = increment.creating();
    }
    match C::Backend::increment_once(c, &increment)? {
        crate::counter::Step::Done(totals) => Ok(totals.is_some()),
        // No bounds were set: nothing can refuse the increment.
        crate::counter::Step::Refused(_) => Err(Error::NotFound(
            "an increment without bounds was refused".into(),
        )),
    }
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
/// # include!("../doctest_setup.rs");
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
    let sql = PruneSql::<C::Backend> {
        table: L::walk_table,
        created_at: L::CREATED_AT,
        older_than: &older_than,
    };
    conn.single(|c| c.run_execute(&sql))
}

/// [`prune`] for a ledger of increments ([`IncrementLedger`]): deletes the rows created before
/// `older_than` (of every scope) and returns how many. A pruned key is forgotten: a later
/// [`Record`] with it counts again.
///
/// # Errors
/// Database errors.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use upsert_kit::idempotency::{prune_records, IdempotencyKey, Record};
///
/// diesel::table! { hits (page) { page -> Text, n -> BigInt, } }
/// diesel::table! {
///     hit_log (request) { request -> Text, request_hash -> Text, n_after -> BigInt, at -> Timestamp, }
/// }
/// upsert_kit::counter! { table = hits, key = (page: String), amounts = (n); pub struct Hits; }
/// upsert_kit::ledger! {
///     table = hit_log, key = request, fingerprint = request_hash: String, created_at = at, totals = (n_after);
///     pub struct HitLog;
/// }
/// #[derive(Queryable, Selectable)]
/// #[diesel(table_name = hit_log)]
/// struct Logged { n_after: i64 }
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// conn.batch_execute(
///     "CREATE TABLE hits (page TEXT PRIMARY KEY NOT NULL, n BIGINT NOT NULL DEFAULT 0);
///      CREATE TABLE hit_log (request TEXT PRIMARY KEY NOT NULL, request_hash TEXT NOT NULL,
///          n_after BIGINT NOT NULL, at TIMESTAMP NOT NULL);",
/// )?;
/// let now = chrono::Utc::now().naive_utc();
/// let (key, page, fingerprint) = (IdempotencyKey::new("r-1")?, "/home".to_owned(), String::new());
/// let hit = || Record::<HitLog, Hits>::new(&(), &key, &fingerprint, &page, [1], now).creating();
/// assert!(hit().run::<Logged, _>(&mut conn)?.unwrap().applied);
/// assert_eq!(prune_records::<HitLog, _>(&mut conn, now - chrono::Duration::days(7))?, 0);
/// assert_eq!(prune_records::<HitLog, _>(&mut conn, now + chrono::Duration::seconds(1))?, 1);
/// let again = hit().run::<Logged, _>(&mut conn)?.unwrap(); // the key was forgotten
/// assert!(again.applied && again.value.n_after == 2);
/// # Ok(()) }
/// ```
pub fn prune_records<L, C>(conn: &mut C, older_than: NaiveDateTime) -> Result<usize>
where
    L: IncrementLedger + BindKey<C::Backend>,
    C: WriteConnection,
{
    let sql = PruneSql::<C::Backend> {
        table: L::walk_table,
        created_at: L::CREATED_AT,
        older_than: &older_than,
    };
    conn.single(|c| c.run_execute(&sql))
}

/// How a backend claims a key and runs a keyed increment: implemented for each backend in a
/// file of its own beside this one (`pg.rs`, `sqlite.rs`, `mysql.rs`). Sealed (through
/// [`Dialect`]); its methods are the crate's plumbing.
pub trait IdempotencyBackend: CounterBackend {
    /// Inserts `key`'s ledger row (no result yet) unless the key is taken; whether this call
    /// took it. Runs inside [`run`]'s transaction.
    #[doc(hidden)]
    fn claim<L, C>(c: &mut C, key: &str, fingerprint: &str, at: &NaiveDateTime) -> Result<bool>
    where
        L: BindLedger<Self>,
        C: WriteConnection<Backend = Self>;

    /// What makes the read of a taken key's row see the newest committed row: nothing where a
    /// statement reads it anyway (PostgreSQL's READ COMMITTED, SQLite's single writer),
    /// ` LOCK IN SHARE MODE` on MySQL (also inside a REPEATABLE READ snapshot).
    #[doc(hidden)]
    fn push_read_lock(_out: &mut AstPass<'_, '_, Self>) {}

    /// [`increment_once`] after its checks: by default [`run`] around the counter's
    /// [`upsert_increment`](crate::counter::upsert_increment), one transaction.
    #[doc(hidden)]
    fn increment_once<L, T, C>(
        conn: &mut C,
        key: &IdempotencyKey,
        fingerprint: &str,
        counter_key: &T::Key,
        amounts: T::Amounts,
        at: NaiveDateTime,
    ) -> Result<Idempotent<T::Amounts>>
    where
        L: BindLedger<Self>,
        T: Counter + BindKey<Self>,
        T::Amounts: StoredResult,
        C: WriteConnection<Backend = Self>,
    {
        // The caller's span (`increment_once`) is the only one: the parts run unobserved.
        run_unobserved::<L, C, _, _>(conn, key, fingerprint, at, |c| {
            let increment = crate::counter::Increment::<T>::new(counter_key, amounts).creating();
            increment
                .run_unobserved(c)?
                .ok_or_else(|| Error::NotFound("the upserted counter row returned nothing".into()))
        })
    }

    /// One try of [`Record::run`]: the counter's increment and the ledger row, or neither.
    #[doc(hidden)]
    fn record_once<L, T, C, O>(
        conn: &mut C,
        rec: &Record<'_, L, T>,
        out: &O,
    ) -> Result<Recorded<O::Row>>
    where
        L: Records<T> + BindKey<Self>,
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>;
}

/// The claim where a write returns rows (PostgreSQL, SQLite): `INSERT INTO l (key,
/// fingerprint, result, created_at) VALUES ($1, $2, NULL, $3) ON CONFLICT (key) DO NOTHING
/// RETURNING 1`; a row back means this call took the key.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn claim_returning<L, C>(
    c: &mut C,
    key: &str,
    fingerprint: &str,
    at: &NaiveDateTime,
) -> Result<bool>
where
    L: BindLedger<C::Backend>,
    C: WriteConnection,
{
    struct ClaimSql<'a, L> {
        insert: InsertKeySql<'a, L>,
    }
    impl<L: BindLedger<DB>, DB: Dialect> QueryFragment<DB> for ClaimSql<'_, L> {
        fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
            self.insert.walk_ast(out.reborrow())?;
            out.push_sql(" ON CONFLICT (");
            out.push_identifier(L::KEY)?;
            out.push_sql(") DO NOTHING RETURNING CAST(1 AS BIGINT)");
            Ok(())
        }
    }
    let claim = ClaimSql {
        insert: InsertKeySql::<L> {
            key,
            fingerprint,
            at,
            totals_from: None,
            _ledger: std::marker::PhantomData,
        },
    };
    Ok(!c.run_ints(&claim)?.is_empty())
}

/// `INSERT INTO l (key, fingerprint, result, created_at) VALUES ($1, $2, NULL, $3)`: the start
/// of every backend's claim; with `totals_from`, `… SELECT $1, $2, __kit_totals, $3 FROM
/// <step>` (PostgreSQL's keyed increment stores the totals its `WITH` step returned).
struct InsertKeySql<'a, L> {
    key: &'a str,
    fingerprint: &'a str,
    at: &'a NaiveDateTime,
    totals_from: Option<&'static str>,
    _ledger: std::marker::PhantomData<L>,
}

impl<L: BindLedger<DB>, DB: Dialect> QueryFragment<DB> for InsertKeySql<'_, L> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("INSERT INTO ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" (");
        crate::sql::push_identifiers(
            &mut out,
            &[L::KEY, L::FINGERPRINT, L::RESULT, L::CREATED_AT],
        )?;
        out.push_sql(if self.totals_from.is_some() {
            ") SELECT "
        } else {
            ") VALUES ("
        });
        DB::push_text(&mut out, self.key)?;
        out.push_sql(", ");
        DB::push_text(&mut out, self.fingerprint)?;
        out.push_sql(if self.totals_from.is_some() {
            ", __kit_totals, "
        } else {
            ", NULL, "
        });
        DB::push_timestamp(&mut out, self.at)?;
        match self.totals_from {
            Some(step) => {
                out.push_sql(" FROM ");
                out.push_identifier(step)
            }
            None => {
                out.push_sql(")");
                Ok(())
            }
        }
    }
}

/// `UPDATE l SET result = $1 WHERE key = $2`.
struct StoreSql<'a, L> {
    key: &'a str,
    result: &'a str,
    _ledger: std::marker::PhantomData<L>,
}

impl<L: BindLedger<DB>, DB: Dialect> QueryFragment<DB> for StoreSql<'_, L> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" SET ");
        out.push_identifier(L::RESULT)?;
        out.push_sql(" = ");
        DB::push_text(&mut out, self.result)?;
        out.push_sql(" WHERE ");
        out.push_identifier(L::KEY)?;
        out.push_sql(" = ");
        DB::push_text(&mut out, self.key)
    }
}

/// `SELECT fingerprint, result FROM l WHERE key = $1` and the backend's read lock.
struct ReadSql<'a, L> {
    key: &'a str,
    _ledger: std::marker::PhantomData<L>,
}

impl<L: BindLedger<DB>, DB: IdempotencyBackend> QueryFragment<DB> for ReadSql<'_, L> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        crate::sql::push_identifiers(&mut out, &[L::FINGERPRINT, L::RESULT])?;
        out.push_sql(" FROM ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" WHERE ");
        out.push_identifier(L::KEY)?;
        out.push_sql(" = ");
        DB::push_text(&mut out, self.key)?;
        DB::push_read_lock(&mut out);
        Ok(())
    }
}

/// `DELETE FROM l WHERE created_at < $1`.
struct PruneSql<'a, DB: Dialect> {
    table: fn(AstPass<'_, '_, DB>) -> QueryResult<()>,
    created_at: &'static str,
    older_than: &'a NaiveDateTime,
}

impl<DB: Dialect> QueryFragment<DB> for PruneSql<'_, DB> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("DELETE FROM ");
        (self.table)(out.reborrow())?;
        out.push_sql(" WHERE ");
        out.push_identifier(self.created_at)?;
        out.push_sql(" < ");
        DB::push_timestamp(&mut out, self.older_than)
    }
}

/// `INSERT INTO l (<scope…>, key, fingerprint, created_at, <amounts…>, <totals…>, <row…>)
/// SELECT <scope values…>, $key, $fp, $at, <amount values…>, src.<counter amounts…>,
/// src.<counter columns…> FROM src`: the ledger row of a [`Record`], its totals and copied
/// columns read from `from` (PostgreSQL: the `WITH` step that changed the counter row, whose
/// `RETURNING` names `columns`) or else from the counter row by key; then ` RETURNING
/// <columns>` when asked.
struct RecordSql<'a, L: IncrementLedger, T: Counter, DB> {
    rec: &'a Record<'a, L, T>,
    /// PostgreSQL: the counter's increment as a `WITH` step returning these columns.
    from: Option<&'a [&'a str]>,
    returning: Option<&'a dyn QueryFragment<DB>>,
}

/// The name of the counter's increment inside a recorded increment.
const STEP: &str = "__kit_up";

impl<L, T, DB> QueryFragment<DB> for RecordSql<'_, L, T, DB>
where
    L: IncrementLedger + BindKey<DB>,
    T: Counter + BindKey<DB>,
    DB: Dialect,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let (out, rec) = (&mut out, self.rec);
        let source = |out: &mut AstPass<'_, 'b, DB>, column: &str| -> QueryResult<()> {
            match self.from {
                Some(_) => out.push_identifier(STEP)?,
                None => T::walk_table(out.reborrow())?,
            }
            out.push_sql(".");
            out.push_identifier(column)
        };
        if let Some(columns) = self.from {
            out.push_sql("WITH ");
            out.push_identifier(STEP)?;
            out.push_sql(" AS (");
            crate::counter::walk_increment::<T, DB>(
                out,
                rec.counter_key,
                rec.amounts.as_slice(),
                rec.create,
                Some(columns),
            )?;
            out.push_sql(") ");
        }
        out.push_sql("INSERT INTO ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" (");
        for column in L::KEY {
            out.push_identifier(column)?;
            out.push_sql(", ");
        }
        crate::sql::push_identifiers(out, &[L::IDEMPOTENCY_KEY, L::FINGERPRINT, L::CREATED_AT])?;
        for column in L::AMOUNTS.iter().chain(L::TOTALS) {
            out.push_sql(", ");
            out.push_identifier(column)?;
        }
        for (column, _) in L::ROW {
            out.push_sql(", ");
            out.push_identifier(column)?;
        }
        out.push_sql(") SELECT ");
        if !L::KEY.is_empty() {
            L::walk_key(rec.scope, KeyStyle::Values, out.reborrow())?;
            out.push_sql(", ");
        }
        DB::push_text(out, rec.key.as_str())?;
        out.push_sql(", ");
        rec.fingerprint.push(out)?;
        out.push_sql(", ");
        DB::push_timestamp(out, &rec.at)?;
        if !L::AMOUNTS.is_empty() {
            for amount in rec.amounts.as_slice() {
                out.push_sql(", ");
                DB::push_int(out, amount)?;
            }
        }
        for column in T::AMOUNTS.iter().chain(L::ROW.iter().map(|(_, c)| c)) {
            out.push_sql(", ");
            source(out, column)?;
        }
        out.push_sql(" FROM ");
        match self.from {
            Some(_) => out.push_identifier(STEP)?,
            None => {
                T::walk_table(out.reborrow())?;
                out.push_sql(" WHERE ");
                T::walk_key(rec.counter_key, KeyStyle::Match, out.reborrow())?;
            }
        }
        if let Some(columns) = self.returning {
            out.push_sql(" RETURNING ");
            columns.walk_ast(out.reborrow())?;
        }
        Ok(())
    }
}

/// `SELECT <columns> FROM l WHERE [<scope> AND] key = $key [AND fingerprint = $fp AND
/// <amounts> = $…]` and the backend's read lock: a [`Record`]'s ledger row (with `request`:
/// only if it records the same request).
struct ReadRecordSql<'a, L: IncrementLedger, T: Counter, DB> {
    rec: &'a Record<'a, L, T>,
    columns: &'a dyn QueryFragment<DB>,
    request: bool,
}

impl<L, T, DB> QueryFragment<DB> for ReadRecordSql<'_, L, T, DB>
where
    L: IncrementLedger + BindKey<DB>,
    T: Counter,
    DB: IdempotencyBackend,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let (out, rec) = (&mut out, self.rec);
        out.push_sql("SELECT ");
        self.columns.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        L::walk_table(out.reborrow())?;
        out.push_sql(" WHERE ");
        if !L::KEY.is_empty() {
            L::walk_key(rec.scope, KeyStyle::Match, out.reborrow())?;
            out.push_sql(" AND ");
        }
        out.push_identifier(L::IDEMPOTENCY_KEY)?;
        out.push_sql(" = ");
        DB::push_text(out, rec.key.as_str())?;
        if self.request {
            out.push_sql(" AND ");
            out.push_identifier(L::FINGERPRINT)?;
            out.push_sql(" = ");
            rec.fingerprint.push(out)?;
            for (column, amount) in L::AMOUNTS.iter().zip(rec.amounts.as_slice()) {
                out.push_sql(" AND ");
                out.push_identifier(column)?;
                out.push_sql(" = ");
                DB::push_int(out, amount)?;
            }
        }
        DB::push_read_lock(out);
        Ok(())
    }
}

/// `l.key`: what the read of a taken key selects.
struct KeyColumn<L>(std::marker::PhantomData<L>);

impl<L: IncrementLedger + BindKey<DB>, DB: Dialect> QueryFragment<DB> for KeyColumn<L> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        L::walk_table(out.reborrow())?;
        out.push_sql(".");
        out.push_identifier(L::IDEMPOTENCY_KEY)
    }
}

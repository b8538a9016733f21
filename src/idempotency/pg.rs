//! Idempotency keys on PostgreSQL: the claim is `INSERT … ON CONFLICT (key) DO NOTHING
//! RETURNING 1`, and a keyed increment is one statement, `WITH up AS (<upsert increment>
//! RETURNING totals) INSERT INTO ledger … SELECT … FROM up`: a repeated key fails the ledger
//! insert with a unique violation, which undoes the counter change too. A recorded increment
//! ([`Record`]) is the same statement with typed ledger columns: `WITH __kit_up AS (UPDATE
//! counter … RETURNING amounts…, columns…) INSERT INTO ledger (…) SELECT … FROM __kit_up
//! RETURNING <the caller's columns>`.

use super::{
    claim_returning, replay, vanished, BindLedger, IdempotencyBackend, IdempotencyKey, Idempotent,
    InsertKeySql, Record, RecordSql, Recorded, Records, StoredResult, KEY_ATTEMPTS,
};
use crate::conn::{BindKey, WriteConnection};
use crate::counter::{Amounts, Counter};
use crate::declare::Output;
use crate::error::{Error, Result};
use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::QueryResult;

impl IdempotencyBackend for Pg {
    fn claim<L, C>(c: &mut C, key: &str, fingerprint: &str, at: &NaiveDateTime) -> Result<bool>
    where
        L: BindLedger<Self>,
        C: WriteConnection<Backend = Self>,
    {
        claim_returning::<L, C>(c, key, fingerprint, at)
    }

    fn increment_once<L, T, C>(
        conn: &mut C,
        key: &IdempotencyKey,
        fp: &str,
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
        let mut violation = None;
        for _ in 0..KEY_ATTEMPTS {
            let sql = KeyedIncrementSql::<L, T> {
                counter_key,
                amounts: amounts.as_slice(),
                ledger: InsertKeySql {
                    key: key.as_str(),
                    fingerprint: fp,
                    at: &at,
                    totals_from: Some("__kit_up"),
                    _ledger: std::marker::PhantomData,
                },
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
                Err(
                    e @ Error::Constraint {
                        kind: crate::error::ConstraintKind::Unique,
                        ..
                    },
                ) => {
                    match replay::<L, C, T::Amounts>(conn, key, fp)? {
                        Some(replayed) => return Ok(replayed),
                        // Not the ledger's key (another unique index of the counter), or pruned
                        // in between: try once more, and report the error if it stays.
                        None => {
                            tracing::debug!(
                                "keyed increment: unique violation without a ledger row"
                            );
                            violation = Some(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(violation.unwrap_or_else(vanished))
    }

    fn record_once<L, T, C, O>(
        conn: &mut C,
        rec: &Record<'_, L, T>,
        out: &O,
    ) -> Result<Recorded<O::Row>>
    where
        L: Records<T> + BindKey<Self>,
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
        O: Output<C::Raw>,
    {
        // The `WITH` step returns the counter's amount columns and the columns the ledger copies.
        let columns: Vec<&str> = T::AMOUNTS
            .iter()
            .copied()
            .chain(L::ROW.iter().map(|(_, column)| *column))
            .collect();
        let sql = RecordSql::<L, T, Pg> {
            rec,
            from: Some(&columns),
            returning: Some(out.columns()),
        };
        let raw = conn.raw();
        // Alone, the statement is its own transaction (one round trip); inside the caller's, a
        // savepoint keeps a repeated key's unique violation from aborting it.
        let rows = if crate::tx::in_transaction(raw) {
            crate::tx::transaction(raw, |c| out.load(c, &sql))
        } else {
            out.load(raw, &sql)
        };
        Recorded::of(rows.map(|rows| match rows.into_iter().next() {
            Some(row) => Recorded::Applied(row),
            None => Recorded::NoRow,
        }))
    }
}

/// PostgreSQL: `WITH up AS (<upsert increment> RETURNING totals AS t) INSERT INTO l (key,
/// fingerprint, result, created_at) SELECT $k, $f, up.t, $at FROM up RETURNING result`.
struct KeyedIncrementSql<'a, L, T: Counter> {
    counter_key: &'a T::Key,
    amounts: &'a [i64],
    /// The ledger row, its result the totals of `__kit_up`.
    ledger: InsertKeySql<'a, L>,
}

impl<L, T> QueryFragment<Pg> for KeyedIncrementSql<'_, L, T>
where
    L: BindLedger<Pg>,
    T: Counter + BindKey<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH __kit_up (__kit_totals) AS (");
        crate::counter::walk_increment::<T, Pg>(
            &mut out,
            self.counter_key,
            self.amounts,
            true,
            None,
        )?;
        out.push_sql(") ");
        self.ledger.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING ");
        out.push_identifier(L::RESULT)
    }
}

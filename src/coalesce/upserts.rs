//! Upserts of one model with one condition, merged: the calls of a batch are written as one
//! statement per round (PostgreSQL: one `INSERT … SELECT FROM unnest(…)` telling each row's
//! outcome; MySQL: one multi-row `ON DUPLICATE KEY UPDATE` whose rows' outcomes come back as
//! bit masks; SQLite: one statement per row, in the batch's transaction), each caller told its
//! own row's outcome.
//!
//! One statement may not write a row twice, so the rows of one key go out in rounds: the first
//! row of every key, then the second ones, and so on. Each key's rows keep their order, and the
//! rows of different keys touch different rows, so each caller is told what a serial run in
//! that order would have told it. Without a condition, a key's middle rows are not written
//! (each would only be overwritten: `Updated`), nor its first when the update writes every
//! column but the key (one round: the last row written, its `Inserted` told to the first).
//!
//! With `keep`, each key's last row is written with the kept columns of its first row, in one
//! round (see [`UpsertCall::rounds`]; one statement on PostgreSQL, two elsewhere).
//!
//! A merged call of one round, alone in its batch, goes out with no transaction around it, as
//! a direct call, where the backend writes it so that each row is one statement's and told its
//! own result ([`Upsertable::upsert_rows_each`]): PostgreSQL (one statement, all rows or none)
//! and MySQL (one statement of up to 60 rows; a row that met another unique index than the key
//! is left out of it and written alone after it, failing its own caller only).

use super::queue::{lost, Answers, Callers, Fault, Pending, Slot};
use crate::upsert::{UpsertOutcome, Upsertable};
use std::any::Any;
use std::cell::OnceCell;
use std::marker::PhantomData;
use std::sync::Arc;

/// One or more callers' upserts of model `M` with condition `F` (the same for every row: a
/// condition without values of its own, [`NoCondition`](crate::upsert::NoCondition),
/// [`Changed`](crate::upsert::Changed), [`Newer`](crate::upsert::Newer)).
pub(super) struct UpsertCall<Conn, M, F> {
    condition: Option<F>,
    update: Arc<[&'static str]>,
    /// Each caller's row, in the callers' order.
    rows: Vec<M>,
    callers: Callers<UpsertOutcome>,
    /// Split out of a merged call that failed: never merged again.
    alone: bool,
    /// [`UpsertCall::rounds`], computed once per merged call.
    rounds: OnceCell<Rounds>,
    /// A caller's own error, alone in the batch, was a lost connection.
    unfit: bool,
    _conn: PhantomData<fn(&mut Conn)>,
}

/// How a merged call is written: [`UpsertCall::rounds`].
struct Rounds {
    /// The rows' indexes, one statement per round. The rows of no round are told `Updated`.
    rounds: Vec<Vec<usize>>,
    /// The pairs `(first, last)` of a key whose last row is written for both and whose first
    /// takes its `Inserted` (the last is then `Updated`).
    heirs: Vec<(usize, usize)>,
    /// For a single round whose rows are written with the columns the update keeps taken
    /// from each key's first row: those first rows, aligned with the round.
    keeping: Option<Vec<usize>>,
}

impl<Conn, M: Upsertable<Conn, F>, F> UpsertCall<Conn, M, F> {
    pub(super) fn new(row: M, condition: Option<F>, slot: Arc<Slot<UpsertOutcome>>) -> Self {
        UpsertCall {
            condition,
            update: crate::upsert::update_columns::<M>(&[]).into(),
            rows: vec![row],
            callers: Callers::one(slot),
            alone: false,
            rounds: OnceCell::new(),
            unfit: false,
            _conn: PhantomData,
        }
    }

    /// The rows' indexes in rounds: each round holds at most one row per key, sorted by key
    /// (so that concurrent writers lock rows in one order), and a key's rows keep their order
    /// across rounds; and the heirs.
    ///
    /// Without a condition every row of a key overwrites the one before it (`Updated`), so its
    /// rows between the first and the last need not be written. When the update also writes
    /// every column but the key's (no `keep`), the first need not be either: the last row
    /// written alone leaves what the serial run leaves, and an insert of it means the key was
    /// new, so the first row would have been the one inserted. One round then. With `keep`, the
    /// serial run leaves the last row's updated columns and the kept columns of the first row
    /// (when it inserted) or of the stored row: one round of that row (the last's columns, the
    /// first's kept ones), its `Inserted` told to the first, which the backend writes as one
    /// row (PostgreSQL) or as the firsts, then the lasts ([`Upsertable::upsert_rows_keeping`]).
    fn rounds(&self) -> &Rounds {
        self.rounds.get_or_init(|| self.rounds_of(self.keys()))
    }

    /// [`UpsertCall::rounds`] of `keys`.
    fn rounds_of(&self, keys: Vec<Vec<usize>>) -> Rounds {
        let depth = keys.iter().map(Vec::len).max().unwrap_or(0);
        let keeps_nothing = self.update.len() + M::KEY.len() == M::COLUMNS.len();
        if self.condition.is_some() || depth < 2 {
            // Round r: each key's r-th row.
            let rounds = (0..depth)
                .map(|r| {
                    keys.iter()
                        .filter_map(|rows| rows.get(r).copied())
                        .collect()
                })
                .collect();
            return Rounds {
                rounds,
                heirs: Vec::new(),
                keeping: None,
            };
        }
        let (mut firsts, mut lasts, mut heirs) = (Vec::new(), Vec::new(), Vec::new());
        for rows in keys {
            let (first, last) = (rows[0], rows[rows.len() - 1]);
            firsts.push(first);
            lasts.push(last);
            if first != last {
                heirs.push((first, last));
            }
        }
        Rounds {
            rounds: vec![lasts],
            heirs,
            keeping: (!keeps_nothing).then_some(firsts),
        }
    }

    /// Each key's rows in their order, the keys sorted.
    fn keys(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|&a, &b| self.rows[a].cmp_key(&self.rows[b]).then(a.cmp(&b)));
        let mut keys: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match keys.last_mut() {
                Some(rows) if self.rows[rows[0]].cmp_key(&self.rows[i]).is_eq() => rows.push(i),
                _ => keys.push(vec![i]),
            }
        }
        keys
    }
}

impl<Conn, M, F> Pending<Conn> for UpsertCall<Conn, M, F>
where
    Conn: 'static,
    M: Upsertable<Conn, F> + Send + 'static,
    F: Default + Send + 'static,
{
    fn run(&mut self, conn: &mut Conn, alone: bool) -> std::result::Result<(), Fault> {
        let condition = self.condition.as_ref();
        let told = if let [only] = self.rows.as_slice() {
            M::upsert_one(conn, only, &self.update, condition).map(|o| vec![Ok(o)])
        } else {
            // The rows not written keep `Updated`.
            let Rounds {
                rounds,
                heirs,
                keeping,
            } = self.rounds();
            let mut told: Vec<crate::Result<UpsertOutcome>> = (self.rows.iter())
                .map(|_| Ok(UpsertOutcome::Updated))
                .collect();
            let mut failed = None;
            for round in rounds {
                let rows: Vec<&M> = round.iter().map(|&i| &self.rows[i]).collect();
                let written = match keeping {
                    Some(firsts) => {
                        let firsts: Vec<&M> = firsts.iter().map(|&i| &self.rows[i]).collect();
                        M::upsert_rows_keeping(conn, &rows, &firsts, &self.update)
                            .map(|told| told.into_iter().map(Ok).collect())
                    }
                    // With no transaction around it: each row its own result.
                    None if alone => M::upsert_rows_each(conn, &rows, &self.update, condition),
                    None => M::upsert_rows(conn, &rows, &self.update, condition)
                        .map(|told| told.into_iter().map(Ok).collect()),
                };
                match written {
                    Ok(outcomes) => {
                        for (&i, outcome) in round.iter().zip(outcomes) {
                            told[i] = outcome;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            for &(first, last) in heirs {
                if matches!(told[last], Ok(UpsertOutcome::Inserted)) {
                    told[first] = Ok(UpsertOutcome::Inserted);
                    told[last] = Ok(UpsertOutcome::Updated);
                }
            }
            failed.map_or(Ok(told), Err)
        };
        match told {
            Ok(told) => {
                for (i, result) in told.into_iter().enumerate() {
                    self.unfit |= matches!(&result, Err(e) if lost(e));
                    self.callers.keep(i, result);
                }
            }
            Err(e) => self.callers.keep_error(&Fault::of(e)?),
        }
        Ok(())
    }

    fn callers_ref(&self) -> &dyn Answers {
        &self.callers
    }

    fn callers_mut(&mut self) -> &mut dyn Answers {
        &mut self.callers
    }

    fn atomic(&self) -> bool {
        // One row; or one round of rows that the backend writes with no transaction, each
        // row told its own result (PostgreSQL; MySQL without kept columns).
        if self.rows.len() == 1 {
            return true;
        }
        let Rounds {
            rounds, keeping, ..
        } = self.rounds();
        rounds.len() == 1
            && if keeping.is_some() {
                <M as Upsertable<Conn, F>>::KEPT_ROWS_WITHOUT_TRANSACTION
            } else {
                <M as Upsertable<Conn, F>>::ROWS_WITHOUT_TRANSACTION
            }
    }

    fn fit(&self) -> bool {
        !self.unfit
    }

    fn as_any(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    fn absorb(&mut self, other: &mut dyn Pending<Conn>) -> bool {
        let Some(other) = other
            .as_any()
            .and_then(|o| o.downcast_mut::<UpsertCall<Conn, M, F>>())
        else {
            return false;
        };
        if self.alone || other.alone {
            return false;
        }
        self.rows.append(&mut other.rows);
        self.callers.append(&mut other.callers);
        self.rounds = OnceCell::new();
        true
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Pending<Conn>>> {
        let UpsertCall {
            condition,
            update,
            rows,
            callers,
            ..
        } = *self;
        let conditional = condition.is_some();
        rows.into_iter()
            .zip(callers.split())
            .map(|(row, callers)| {
                Box::new(UpsertCall::<Conn, M, F> {
                    // Every row has the same condition, a value-less one, made from its type.
                    condition: conditional.then(F::default),
                    update: Arc::clone(&update),
                    rows: vec![row],
                    callers,
                    alone: true,
                    rounds: OnceCell::new(),
                    unfit: false,
                    _conn: PhantomData,
                }) as Box<dyn Pending<Conn>>
            })
            .collect()
    }
}

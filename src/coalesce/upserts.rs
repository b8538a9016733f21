//! Upserts of one model with one condition, merged: the calls of a batch are written as one
//! statement per round (PostgreSQL: one `INSERT … SELECT FROM unnest(…)` telling each row's
//! outcome; MySQL: one multi-row `ON DUPLICATE KEY UPDATE` whose rows' outcomes come back as
//! bit masks; SQLite: one statement per row, in the batch's transaction), each caller told its
//! own row's outcome.
//!
//! One statement may not write a row twice, so the rows of one key go out in rounds: the first
//! row of every key, then the second ones, and so on. Each key's rows keep their order, and the
//! rows of different keys touch different rows, so each caller is told what a serial run in
//! that order would have told it.

use super::queue::{Answers, Callers, Fault, Pending, Slot};
use crate::upsert::{UpsertModel, UpsertOutcome, Upsertable};
use std::any::Any;
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
    _conn: PhantomData<fn(&mut Conn)>,
}

impl<Conn, M: UpsertModel, F> UpsertCall<Conn, M, F> {
    pub(super) fn new(row: M, condition: Option<F>, slot: Arc<Slot<UpsertOutcome>>) -> Self {
        UpsertCall {
            condition,
            update: crate::upsert::update_columns::<M>(&[]).into(),
            rows: vec![row],
            callers: Callers::one(slot),
            alone: false,
            _conn: PhantomData,
        }
    }

    /// The rows' indexes in rounds: each round holds at most one row per key, sorted by key
    /// (so that concurrent writers lock rows in one order), and a key's rows keep their order
    /// across rounds. Without a condition, a key's rows between its first and its last need
    /// not be written: each would overwrite the row unconditionally (`Updated`) and be
    /// overwritten by the last, and none touches the columns kept on update; they are returned
    /// apart, and the rounds are two at most.
    fn rounds(&self) -> (Vec<Vec<usize>>, Vec<usize>) {
        let mut rounds = self.all_rounds();
        let mut skipped = Vec::new();
        if self.condition.is_none() && rounds.len() > 2 {
            let mut last: Vec<usize> = Vec::new();
            for round in rounds.drain(1..).rev() {
                for i in round {
                    // Rounds are walked from the last, so a key's first hit here is its last row.
                    let key_seen = last
                        .iter()
                        .any(|&j| self.rows[j].cmp_key(&self.rows[i]).is_eq());
                    if key_seen {
                        skipped.push(i);
                    } else {
                        last.push(i);
                    }
                }
            }
            last.sort_by(|&a, &b| self.rows[a].cmp_key(&self.rows[b]));
            rounds.push(last);
        }
        (rounds, skipped)
    }

    fn all_rounds(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|&a, &b| self.rows[a].cmp_key(&self.rows[b]).then(a.cmp(&b)));
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        let mut round = 0;
        for (n, &i) in order.iter().enumerate() {
            let same_key = n > 0 && self.rows[order[n - 1]].cmp_key(&self.rows[i]).is_eq();
            round = if same_key { round + 1 } else { 0 };
            if rounds.len() <= round {
                rounds.push(Vec::new());
            }
            rounds[round].push(i);
        }
        rounds
    }
}

impl<Conn, M, F> Pending<Conn> for UpsertCall<Conn, M, F>
where
    Conn: 'static,
    M: Upsertable<Conn, F> + Send + 'static,
    F: Default + Send + 'static,
{
    fn run(&mut self, conn: &mut Conn) -> std::result::Result<(), Fault> {
        let condition = self.condition.as_ref();
        let told = if let [only] = self.rows.as_slice() {
            M::upsert_one(conn, only, &self.update, condition).map(|o| vec![(0, o)])
        } else {
            let (rounds, skipped) = self.rounds();
            let mut told: Vec<(usize, UpsertOutcome)> = skipped
                .into_iter()
                .map(|i| (i, UpsertOutcome::Updated))
                .collect();
            let mut failed = None;
            for round in rounds {
                let rows: Vec<&M> = round.iter().map(|&i| &self.rows[i]).collect();
                match M::upsert_rows(conn, &rows, &self.update, condition) {
                    Ok(outcomes) => told.extend(round.into_iter().zip(outcomes)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            failed.map_or(Ok(told), Err)
        };
        match told {
            Ok(told) => {
                for (i, outcome) in told {
                    self.callers.keep(i, Ok(outcome));
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
        true
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
                    _conn: PhantomData,
                }) as Box<dyn Pending<Conn>>
            })
            .collect()
    }
}

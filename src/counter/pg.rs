//! Counters on PostgreSQL: one statement per increment, `UPDATE … RETURNING` or, creating the
//! row, `INSERT … ON CONFLICT (key) DO UPDATE … RETURNING`, the bounds in its `WHERE`.

use super::{increment_returning, BindKey, Counter, CounterBackend, Increment, Step};
use crate::conn::WriteConnection;
use crate::error::Result;
use diesel::pg::Pg;

impl CounterBackend for Pg {
    fn increment_once<T, C>(conn: &mut C, increment: &Increment<'_, T>) -> Result<Step<T::Amounts>>
    where
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
    {
        increment_returning(conn, increment)
    }
}

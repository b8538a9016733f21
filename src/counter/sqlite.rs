//! Counters on SQLite: PostgreSQL's statements (`UPDATE … RETURNING`, `INSERT … ON CONFLICT …
//! RETURNING`), each alone after the process's writer gate of the file: a writing statement
//! takes the write lock when it starts, so it reads nothing stale.

use super::{increment_returning, BindKey, Counter, CounterBackend, Increment, Step};
use crate::conn::WriteConnection;
use crate::error::Result;
use diesel::sqlite::Sqlite;

impl CounterBackend for Sqlite {
    fn increment_once<T, C>(conn: &mut C, increment: &Increment<'_, T>) -> Result<Step<T::Amounts>>
    where
        T: Counter + BindKey<Self>,
        C: WriteConnection<Backend = Self>,
    {
        increment_returning(conn, increment)
    }
}

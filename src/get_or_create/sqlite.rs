//! Get-or-create on SQLite: the read by key first (in-process, no round trip), and on a miss
//! PostgreSQL's two statements inside the file's writer gate.

use super::{
    attempt, vanished, GetOrCreate, InsertReturning, Obtained, SelectByKey, GET_OR_CREATE_ATTEMPTS,
};
use crate::error::Result;
use crate::tx;
use crate::upsert::{BindRow, UpsertModel};
use diesel::query_dsl::methods::LoadQuery;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{RunQueryDsl, Selectable, SelectableHelper};

impl<M, R> GetOrCreate<SqliteConnection, R> for M
where
    M: UpsertModel + BindRow<Sqlite>,
    R: Selectable<Sqlite>,
    for<'a> InsertReturning<'a, M, diesel::dsl::AsSelect<R, Sqlite>, Sqlite>:
        LoadQuery<'a, SqliteConnection, R>,
    for<'a> SelectByKey<'a, M, diesel::dsl::AsSelect<R, Sqlite>>:
        LoadQuery<'a, SqliteConnection, R>,
{
    fn get_or_create_validated(conn: &mut SqliteConnection, row: &Self) -> Result<Obtained<R>> {
        // In-process reads cost no round trip: read first, and write only on a miss.
        let found = SelectByKey {
            table: M::Table::default(),
            row,
            selection: R::as_select(),
        }
        .load::<R>(conn)?;
        if let Some(existing) = found.into_iter().next() {
            return Ok(Obtained {
                row: existing,
                created: false,
            });
        }
        tx::sqlite_single(conn, |conn| {
            for _ in 0..GET_OR_CREATE_ATTEMPTS {
                if let Some(obtained) = attempt::<_, M, R, Sqlite>(conn, row)? {
                    return Ok(obtained);
                }
                tracing::debug!(
                    model = std::any::type_name::<M>(),
                    "get-or-create: the conflicting row vanished before it was read; trying again"
                );
            }
            Err(vanished())
        })
    }
}

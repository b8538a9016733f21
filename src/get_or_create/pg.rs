//! Get-or-create on PostgreSQL: `INSERT … ON CONFLICT (key) DO NOTHING RETURNING <row>`, then
//! on a miss `SELECT <row> … WHERE key = …` (see the module's "Which path is taken").

use super::{
    attempt, vanished, GetOrCreate, InsertReturning, Obtained, SelectByKey, GET_OR_CREATE_ATTEMPTS,
};
use crate::error::Result;
use crate::upsert::UpsertModel;
use diesel::pg::{Pg, PgConnection};
use diesel::query_dsl::methods::LoadQuery;
use diesel::Selectable;

impl<M, R> GetOrCreate<PgConnection, R> for M
where
    M: UpsertModel,
    R: Selectable<Pg>,
    for<'a> InsertReturning<'a, M, diesel::dsl::AsSelect<R, Pg>, Pg>:
        LoadQuery<'a, PgConnection, R>,
    for<'a> SelectByKey<'a, M, diesel::dsl::AsSelect<R, Pg>>: LoadQuery<'a, PgConnection, R>,
{
    fn get_or_create_validated(conn: &mut PgConnection, row: &Self) -> Result<Obtained<R>> {
        for _ in 0..GET_OR_CREATE_ATTEMPTS {
            if let Some(obtained) = attempt::<_, M, R, Pg>(conn, row)? {
                return Ok(obtained);
            }
            tracing::debug!(
                model = std::any::type_name::<M>(),
                "get-or-create: the conflicting row vanished before it was read; trying again"
            );
        }
        Err(vanished())
    }
}

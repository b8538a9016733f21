//! Get-or-create on MySQL and MariaDB: `INSERT … ON DUPLICATE KEY UPDATE` that changes nothing
//! but records whether the key existed, then `SELECT … FOR UPDATE` of the row by key.

use super::{vanished, GetOrCreate, Obtained, SelectByKey, GET_OR_CREATE_ATTEMPTS};
use crate::error::Result;
use crate::upsert::{BindRow, NoCondition, UpsertModel};
use diesel::expression::{Expression, SelectableHelper};
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::LoadQuery;
use diesel::{QueryResult, RunQueryDsl, Selectable};
use std::marker::PhantomData;

/// MySQL: `SELECT <selection> FROM t WHERE k1 = ? AND … FOR UPDATE`: the locking read sees the
/// newest committed row even inside a REPEATABLE READ transaction whose snapshot predates it.
struct MysqlSelectByKey<'a, M: UpsertModel, S>(SelectByKey<'a, M, S>);

/// [`MysqlSelectByKey`]'s query id, as [`SelectByKeyId`] for the locking read.
struct MysqlSelectByKeyId<K, S>(PhantomData<(K, S)>);

impl<M: UpsertModel, S: QueryId> QueryId for MysqlSelectByKey<'_, M, S> {
    type QueryId = MysqlSelectByKeyId<M::StatementId, S::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = S::HAS_STATIC_QUERY_ID;
}

impl<M: UpsertModel, S: Expression> Query for MysqlSelectByKey<'_, M, S> {
    type SqlType = S::SqlType;
}

impl<M: UpsertModel, S, Conn> RunQueryDsl<Conn> for MysqlSelectByKey<'_, M, S> {}

impl<M, S> QueryFragment<Mysql> for MysqlSelectByKey<'_, M, S>
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    S: QueryFragment<Mysql>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}

/// MySQL: `INSERT … ON DUPLICATE KEY UPDATE` that changes nothing but records whether the key
/// existed (see [`crate::upsert`]'s MySQL notes; not `INSERT IGNORE`, which turns unrelated
/// errors into warnings), then the read. A row that collides on another unique index than the
/// key fails with that index's duplicate-key error, as on PostgreSQL.
impl<M, R> GetOrCreate<MysqlConnection, R> for M
where
    M: BindRow<Mysql>,
    M::Table: QueryFragment<Mysql>,
    R: Selectable<Mysql>,
    for<'a> MysqlSelectByKey<'a, M, diesel::dsl::AsSelect<R, Mysql>>:
        LoadQuery<'a, MysqlConnection, R>,
{
    fn get_or_create_validated(conn: &mut MysqlConnection, row: &Self) -> Result<Obtained<R>> {
        for _ in 0..GET_OR_CREATE_ATTEMPTS {
            let outcome = <M as crate::upsert::Upsertable<MysqlConnection>>::upsert_one(
                conn,
                row,
                &[],
                None::<&NoCondition>,
            )?;
            let found = MysqlSelectByKey(SelectByKey {
                table: M::Table::default(),
                row,
                selection: R::as_select(),
            })
            .load::<R>(conn)?;
            if let Some(found) = found.into_iter().next() {
                return Ok(Obtained {
                    row: found,
                    created: outcome == crate::upsert::UpsertOutcome::Inserted,
                });
            }
            tracing::debug!(
                model = std::any::type_name::<M>(),
                "get-or-create: the row vanished before it was read; trying again"
            );
        }
        Err(vanished())
    }
}

//! Claims on PostgreSQL: every [`Queue`](super::Queue) call is one statement (the claim a
//! `FOR UPDATE SKIP LOCKED` scan in a data-modifying `WITH`; complete, fail and extend fenced by
//! id, holder and attempt; a tenant filter in each part for a distributed queue).

use super::{
    fenced, sql, Claim, ClaimConnection, ClaimQueue, Failed, Queue, QueueState, Reaped, StateRow,
    Tenant, MAX_ERROR_CHARS,
};
use crate::error::Result;
use chrono::{DateTime, Utc};
use diesel::deserialize::{self, QueryableByName};
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, Double, Integer, Text, Timestamptz, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;
use std::time::Duration;

impl<Q: ClaimQueue + QueryableByName<Pg>> QueryableByName<Pg> for Claim<Q> {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        Ok(Claim {
            id: NamedRow::get::<BigInt, i64>(row, Q::ID)?,
            // Set by `Queue::claim` from the tenant its statement named.
            tenant: None,
            attempt: NamedRow::get::<Integer, i32>(row, Q::ATTEMPTS)?,
            holder: NamedRow::get::<Text, String>(row, Q::HOLDER)?,
            locked_until: NamedRow::get::<Timestamptz, DateTime<Utc>>(row, Q::LOCKED_UNTIL)?,
            item: Q::build(row)?,
        })
    }
}

impl<Q> ClaimConnection<Q> for PgConnection
where
    Q: ClaimQueue + QueryableByName<Pg>,
    Q::Table: QueryFragment<Pg>,
{
    fn claim_items(&mut self, queue: &Queue<Q>, limit: usize) -> Result<Vec<Claim<Q>>> {
        queue.pg_claim(self, limit)
    }
    fn complete_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>) -> Result<()> {
        queue.pg_complete(self, claim)
    }
    fn fail_item(&mut self, queue: &Queue<Q>, claim: &Claim<Q>, error: &str) -> Result<Failed> {
        queue.pg_fail(self, claim, error)
    }
    fn extend_item(&mut self, queue: &Queue<Q>, claim: &mut Claim<Q>) -> Result<()> {
        queue.pg_extend(self, claim)
    }
    fn reap_items(&mut self, queue: &Queue<Q>) -> Result<Reaped> {
        queue.pg_reap_expired(self)
    }
    fn queue_state(&mut self, queue: &Queue<Q>) -> Result<QueueState> {
        let row: StateRow = StateSql::<Q>::new(queue.tenants()).get_result(self)?;
        Ok(row.into())
    }
}

impl<Q: ClaimQueue> Queue<Q>
where
    Q: QueryableByName<Pg>,
    Q::Table: QueryFragment<Pg>,
{
    fn pg_claim(&self, conn: &mut PgConnection, limit: usize) -> Result<Vec<Claim<Q>>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let scopes = self.scopes()?;
        let lease_ms = millis(self.lease);
        let mut all = Vec::new();
        for tenant in scopes {
            let left = i64::try_from(limit - all.len()).unwrap_or(i64::MAX);
            let mut claims: Vec<Claim<Q>> = QueueSql::<Q, Untyped>::new(
                tenant,
                Statement::Claim {
                    holder: &self.holder,
                    lease_ms: &lease_ms,
                    limit: &left,
                },
            )
            .load(conn)?;
            claims.sort_by_key(|c| c.id);
            for claim in &mut claims {
                claim.tenant = tenant.cloned();
            }
            all.extend(claims);
            if all.len() >= limit {
                break;
            }
        }
        Ok(all)
    }

    fn pg_complete(&self, conn: &mut PgConnection, claim: &Claim<Q>) -> Result<()> {
        let n = QueueSql::<Q, Untyped>::new(
            claim.tenant.as_ref(),
            Statement::Complete {
                id: &claim.id,
                holder: &claim.holder,
                attempt: &claim.attempt,
            },
        )
        .execute(conn)?;
        fenced(n, claim)
    }

    fn pg_fail(&self, conn: &mut PgConnection, claim: &Claim<Q>, error: &str) -> Result<Failed> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let park = claim.attempt >= self.max_attempts;
        let delay_ms = millis(self.backoff_for(claim.attempt));
        let rows: Vec<Option<DateTime<Utc>>> =
            QueueSql::<Q, diesel::sql_types::Nullable<Timestamptz>>::new(
                claim.tenant.as_ref(),
                Statement::Fail {
                    id: &claim.id,
                    holder: &claim.holder,
                    attempt: &claim.attempt,
                    error: &error,
                    retry_after_ms: (!park).then_some(&delay_ms),
                },
            )
            .load(conn)?;
        fenced(rows.len(), claim)?;
        Ok(match rows.into_iter().next().flatten() {
            Some(at) => Failed::Retry { at },
            None => Failed::Parked,
        })
    }

    fn pg_extend(&self, conn: &mut PgConnection, claim: &mut Claim<Q>) -> Result<()> {
        let lease_ms = millis(self.lease);
        let rows: Vec<DateTime<Utc>> = QueueSql::<Q, Timestamptz>::new(
            claim.tenant.as_ref(),
            Statement::Extend {
                id: &claim.id,
                holder: &claim.holder,
                attempt: &claim.attempt,
                lease_ms: &lease_ms,
            },
        )
        .load(conn)?;
        fenced(rows.len(), claim)?;
        if let Some(until) = rows.into_iter().next() {
            claim.locked_until = until;
        }
        Ok(())
    }

    fn pg_reap_expired(&self, conn: &mut PgConnection) -> Result<Reaped> {
        let mut reaped = Reaped::default();
        for tenant in self.scopes()? {
            let statuses: Vec<String> = QueueSql::<Q, Text>::new(
                tenant,
                Statement::Reap {
                    max_attempts: &self.max_attempts,
                },
            )
            .load(conn)?;
            let parked = statuses.iter().filter(|s| *s == Q::FAILED).count();
            reaped.requeued += statuses.len() - parked;
            reaped.parked += parked;
        }
        Ok(reaped)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `$n`, a tenant bound with its SQL type.
fn push_tenant_value<'b>(out: &mut AstPass<'_, 'b, Pg>, tenant: &'b Tenant) -> QueryResult<()> {
    match tenant {
        Tenant::Int(v) => out.push_bind_param::<Integer, _>(v),
        Tenant::BigInt(v) => out.push_bind_param::<BigInt, _>(v),
        Tenant::Text(v) => out.push_bind_param::<Text, _>(v),
    }
}

/// The queue's statements. Identifiers and status literals come from [`ClaimQueue`]; every
/// value is a bind parameter.
pub(super) enum Statement<'a> {
    Claim {
        holder: &'a String,
        lease_ms: &'a f64,
        limit: &'a i64,
    },
    Complete {
        id: &'a i64,
        holder: &'a String,
        attempt: &'a i32,
    },
    Fail {
        id: &'a i64,
        holder: &'a String,
        attempt: &'a i32,
        error: &'a String,
        /// `None`: park.
        retry_after_ms: Option<&'a f64>,
    },
    Extend {
        id: &'a i64,
        holder: &'a String,
        attempt: &'a i32,
        lease_ms: &'a f64,
    },
    Reap {
        max_attempts: &'a i32,
    },
}

pub(super) struct QueueSql<'a, Q: ClaimQueue, ST> {
    table: Q::Table,
    /// The tenant every part of the statement filters by (a queue with a tenant column).
    tenant: Option<&'a Tenant>,
    statement: Statement<'a>,
    _types: PhantomData<fn() -> (Q, ST)>,
}

impl<'a, Q: ClaimQueue, ST> QueueSql<'a, Q, ST> {
    pub(super) fn new(tenant: Option<&'a Tenant>, statement: Statement<'a>) -> Self {
        QueueSql {
            table: Q::Table::default(),
            tenant,
            statement,
            _types: PhantomData,
        }
    }
}

impl<Q: ClaimQueue, ST> QueryId for QueueSql<'_, Q, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: ClaimQueue, ST: 'static> Query for QueueSql<'_, Q, ST> {
    type SqlType = ST;
}

impl<Q: ClaimQueue, ST, Conn> RunQueryDsl<Conn> for QueueSql<'_, Q, ST> {}

impl<Q: ClaimQueue, ST> QueryFragment<Pg> for QueueSql<'_, Q, ST>
where
    Q::Table: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let t = &self.table;
        // `tenant = $ AND ` for a queue with a tenant column.
        let tenant = self
            .tenant
            .and_then(|t| Q::TENANT.map(|column| (column, t)));
        let tenant_and = |out: &mut AstPass<'_, 'b, Pg>| -> QueryResult<()> {
            if let Some((column, value)) = tenant {
                out.push_identifier(column)?;
                out.push_sql(" = ");
                push_tenant_value(out, value)?;
                out.push_sql(" AND ");
            }
            Ok(())
        };
        // `WHERE [tenant = $ AND] id = $ AND status = 'processing' AND holder = $ AND attempts = $`
        let fence = |out: &mut AstPass<'_, 'b, Pg>,
                     id: &'b i64,
                     holder: &'b String,
                     attempt: &'b i32|
         -> QueryResult<()> {
            out.push_sql(" WHERE ");
            tenant_and(out)?;
            sql::<Q, Pg>(out, t, "{id} = ")?;
            out.push_bind_param::<BigInt, _>(id)?;
            sql::<Q, Pg>(out, t, " AND {status} = {processing} AND {holder} = ")?;
            out.push_bind_param::<Text, _>(holder)?;
            sql::<Q, Pg>(out, t, " AND {attempts} = ")?;
            out.push_bind_param::<Integer, _>(attempt)
        };
        sql::<Q, Pg>(&mut out, t, "UPDATE {t} SET ")?;
        match &self.statement {
            Statement::Claim {
                holder,
                lease_ms,
                limit,
            } => {
                sql::<Q, Pg>(&mut out, t, "{status} = {processing}, {holder} = ")?;
                out.push_bind_param::<Text, _>(*holder)?;
                sql::<Q, Pg>(&mut out, t, ", {locked_until} = statement_timestamp() + ")?;
                out.push_bind_param::<Double, _>(*lease_ms)?;
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    " * interval '1 millisecond', {attempts} = {attempts} + 1 WHERE ",
                )?;
                tenant_and(&mut out)?;
                sql::<Q, Pg>(&mut out, t, "{id} = ANY(ARRAY(SELECT {id} FROM {t} WHERE ")?;
                tenant_and(&mut out)?;
                sql::<Q, Pg>(&mut out, t, READY)?;
                sql::<Q, Pg>(&mut out, t, " ORDER BY {id} LIMIT ")?;
                out.push_bind_param::<BigInt, _>(*limit)?;
                out.push_sql(" FOR UPDATE SKIP LOCKED)) RETURNING *");
            }
            Statement::Complete {
                id,
                holder,
                attempt,
            } => {
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    "{status} = {done}, {holder} = NULL, {locked_until} = NULL, \
                     {last_error} = NULL",
                )?;
                fence(&mut out, id, holder, attempt)?;
            }
            Statement::Fail {
                id,
                holder,
                attempt,
                error,
                retry_after_ms,
            } => {
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    match retry_after_ms {
                        Some(_) => "{status} = {retry}, {holder} = NULL, {last_error} = ",
                        None => "{status} = {failed}, {holder} = NULL, {last_error} = ",
                    },
                )?;
                out.push_bind_param::<Text, _>(*error)?;
                match retry_after_ms {
                    Some(ms) => {
                        sql::<Q, Pg>(&mut out, t, ", {locked_until} = statement_timestamp() + ")?;
                        out.push_bind_param::<Double, _>(*ms)?;
                        out.push_sql(" * interval '1 millisecond'");
                    }
                    None => sql::<Q, Pg>(&mut out, t, ", {locked_until} = NULL")?,
                }
                fence(&mut out, id, holder, attempt)?;
                sql::<Q, Pg>(&mut out, t, " RETURNING {locked_until}")?;
            }
            Statement::Extend {
                id,
                holder,
                attempt,
                lease_ms,
            } => {
                sql::<Q, Pg>(&mut out, t, "{locked_until} = statement_timestamp() + ")?;
                out.push_bind_param::<Double, _>(*lease_ms)?;
                out.push_sql(" * interval '1 millisecond'");
                fence(&mut out, id, holder, attempt)?;
                sql::<Q, Pg>(&mut out, t, " RETURNING {locked_until}")?;
            }
            Statement::Reap { max_attempts } => {
                // Every expression of SET reads the row as it was before the update.
                sql::<Q, Pg>(&mut out, t, "{status} = CASE WHEN {attempts} >= ")?;
                out.push_bind_param::<Integer, _>(*max_attempts)?;
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    " THEN {failed} ELSE {retry} END, \
                     {last_error} = 'lease of ' || coalesce({holder}, '?') || ' expired', \
                     {holder} = NULL, {locked_until} = NULL WHERE ",
                )?;
                tenant_and(&mut out)?;
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    "{id} = ANY(ARRAY(SELECT {id} FROM {t} WHERE {status} = {processing} AND ",
                )?;
                tenant_and(&mut out)?;
                sql::<Q, Pg>(
                    &mut out,
                    t,
                    "{locked_until} <= statement_timestamp() FOR UPDATE SKIP LOCKED)) \
                     RETURNING {status}",
                )?;
            }
        }
        Ok(())
    }
}

/// [`Queue::state`]'s statement: one row of counts, one pass over the rows not `done`.
///
/// ```sql
/// SELECT count(*) FILTER (WHERE <ready>) AS ready, count(*) FILTER (WHERE <waiting>) AS waiting,
///        count(*) FILTER (WHERE <leased>) AS leased, count(*) FILTER (WHERE <expired>) AS expired,
///        count(*) FILTER (WHERE status = 'failed') AS parked,
///        CAST(extract(epoch FROM statement_timestamp()
///                                - min(created_at) FILTER (WHERE <ready>)) * 1000000 AS BIGINT)
///            AS oldest_ready_micros   -- CAST(NULL AS BIGINT) without ClaimQueue::CREATED_AT
/// FROM t WHERE [tenant IN ($1, …) AND] status IN ('pending', 'retry', 'processing', 'failed')
/// ```
pub(super) struct StateSql<'a, Q: ClaimQueue> {
    table: Q::Table,
    /// The tenants counted (a queue with a tenant column); none: the whole table.
    tenants: &'a [Tenant],
    _queue: PhantomData<fn() -> Q>,
}

impl<'a, Q: ClaimQueue> StateSql<'a, Q> {
    pub(super) fn new(tenants: &'a [Tenant]) -> Self {
        StateSql {
            table: Q::Table::default(),
            tenants,
            _queue: PhantomData,
        }
    }
}

impl<Q: ClaimQueue> QueryId for StateSql<'_, Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: ClaimQueue> Query for StateSql<'_, Q> {
    type SqlType = Untyped;
}

impl<Q: ClaimQueue, Conn> RunQueryDsl<Conn> for StateSql<'_, Q> {}

/// `status IN ('pending', 'retry') AND (locked_until IS NULL OR locked_until <=
/// statement_timestamp())`: what a claim takes.
const READY: &str = "{status} IN ({pending}, {retry}) \
                     AND ({locked_until} IS NULL OR {locked_until} <= statement_timestamp())";

impl<Q: ClaimQueue> QueryFragment<Pg> for StateSql<'_, Q>
where
    Q::Table: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let t = &self.table;
        out.push_sql("SELECT count(*) FILTER (WHERE ");
        sql::<Q, Pg>(&mut out, t, READY)?;
        sql::<Q, Pg>(
            &mut out, t,
            ") AS ready, \
             count(*) FILTER (WHERE {status} IN ({pending}, {retry}) \
                 AND ({locked_until} > statement_timestamp())) AS waiting, \
             count(*) FILTER (WHERE {status} = {processing} \
                 AND ({locked_until} IS NULL OR {locked_until} > statement_timestamp())) AS leased, \
             count(*) FILTER (WHERE {status} = {processing} \
                 AND ({locked_until} <= statement_timestamp())) AS expired, \
             count(*) FILTER (WHERE {status} = {failed}) AS parked, ",
        )?;
        match Q::CREATED_AT {
            Some(created_at) => {
                out.push_sql("CAST(extract(epoch FROM statement_timestamp() - min(");
                out.push_identifier(created_at)?;
                out.push_sql(") FILTER (WHERE ");
                sql::<Q, Pg>(&mut out, t, READY)?;
                out.push_sql(")) * 1000000 AS BIGINT)");
            }
            None => out.push_sql("CAST(NULL AS BIGINT)"),
        }
        sql::<Q, Pg>(&mut out, t, " AS oldest_ready_micros FROM {t} WHERE ")?;
        if let (Some(column), false) = (Q::TENANT, self.tenants.is_empty()) {
            out.push_identifier(column)?;
            out.push_sql(" IN (");
            for (i, tenant) in self.tenants.iter().enumerate() {
                if i > 0 {
                    out.push_sql(", ");
                }
                push_tenant_value(&mut out, tenant)?;
            }
            out.push_sql(") AND ");
        }
        sql::<Q, Pg>(
            &mut out,
            t,
            "{status} IN ({pending}, {retry}, {processing}, {failed})",
        )
    }
}

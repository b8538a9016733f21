//! Checks, on plain PostgreSQL, of what distributed PostgreSQL (Citus) needs from a schema and
//! from the statements sent to it (the workspace's docs/citus.md says why):
//!
//! - [`distribution_problems`]: every primary key, unique constraint and unique index of a
//!   table distributed by a column includes that column, and every foreign key between two
//!   distributed tables includes the distribution column on both sides, in the same place
//!   (Citus refuses the table otherwise: "Distributed relations cannot have UNIQUE, EXCLUDE,
//!   or PRIMARY KEY constraints that do not include the partition column").
//! - [`capture`] records the text of every statement a closure sends on a connection, and
//!   [`unrouted`] lists those of them that touch a table without naming its key (a statement
//!   that does not name the distribution column goes to every shard).

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::sql_types::{Array, Bool, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use std::sync::{Arc, Mutex};

/// How a table would be placed on Citus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Hash-distributed by this column (`create_distributed_table('t', 'column')`).
    Distributed(&'a str),
    /// A reference table (`create_reference_table('t')`): a copy on every node, any keys.
    Reference,
}

#[derive(QueryableByName)]
struct UniqueKey {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Array<Text>)]
    columns: Vec<String>,
    #[diesel(sql_type = Bool)]
    is_constraint: bool,
}

#[derive(QueryableByName)]
struct ForeignKey {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    referenced: String,
    #[diesel(sql_type = Array<Text>)]
    columns: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    referenced_columns: Vec<String>,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// What keeps the declared `tables` (in the connection's `search_path`) from being placed on
/// Citus as declared: one sentence per problem, empty when there is none. Reads the catalog
/// (`pg_index`, `pg_constraint`): unique indexes without a constraint count as unique keys.
///
/// # Panics
/// When the catalog cannot be read.
pub fn distribution_problems(
    conn: &mut PgConnection,
    tables: &[(&str, Placement<'_>)],
) -> Vec<String> {
    let placement = |table: &str| tables.iter().find(|(t, _)| *t == table).map(|(_, p)| *p);
    let mut problems = Vec::new();
    for &(table, place) in tables {
        let exists: Exists = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS exists")
            .bind::<Text, _>(table)
            .get_result(conn)
            .expect("read the catalog");
        if !exists.exists {
            problems.push(format!("{table}: no such table"));
            continue;
        }
        let Placement::Distributed(column) = place else {
            continue;
        };
        let keys: Vec<UniqueKey> = diesel::sql_query(
            "SELECT i.indexrelid::regclass::text AS name, \
             ARRAY(SELECT a.attname::text FROM unnest(i.indkey) k \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) AS columns, \
             EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid \
                     AND c.contype IN ('p', 'u', 'x')) AS is_constraint \
             FROM pg_index i WHERE i.indrelid = $1::regclass AND (i.indisunique OR i.indisexclusion) \
             ORDER BY 1",
        )
        .bind::<Text, _>(table)
        .load(conn)
        .expect("read the unique keys");
        for key in keys {
            if !key.columns.iter().any(|c| c == column) {
                let what = if key.is_constraint {
                    "constraint"
                } else {
                    "unique index"
                };
                problems.push(format!(
                    "{table}: {what} {} on ({}) does not include the distribution column {column}",
                    key.name,
                    key.columns.join(", ")
                ));
            }
        }
        let fks: Vec<ForeignKey> = diesel::sql_query(
            "SELECT c.conname::text AS name, c.confrelid::regclass::text AS referenced, \
             ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o) \
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns, \
             ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o) \
                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o) \
                   AS referenced_columns \
             FROM pg_constraint c WHERE c.conrelid = $1::regclass AND c.contype = 'f' ORDER BY 1",
        )
        .bind::<Text, _>(table)
        .load(conn)
        .expect("read the foreign keys");
        for fk in fks {
            match placement(&fk.referenced) {
                Some(Placement::Reference) => {}
                Some(Placement::Distributed(theirs)) => {
                    let ours = fk.columns.iter().position(|c| c == column);
                    if ours.is_none()
                        || ours != fk.referenced_columns.iter().position(|c| c == theirs)
                    {
                        problems.push(format!(
                            "{table}: foreign key {} ({}) -> {} ({}) does not pair the distribution \
                             columns {column} and {theirs}",
                            fk.name,
                            fk.columns.join(", "),
                            fk.referenced,
                            fk.referenced_columns.join(", ")
                        ));
                    }
                }
                None => problems.push(format!(
                    "{table}: foreign key {} references {}, whose placement is not declared",
                    fk.name, fk.referenced
                )),
            }
        }
    }
    problems
}

/// Records every statement's text (with its binds, as Diesel's `debug_query` shows them).
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Instrumentation for Recorder {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            self.0.lock().unwrap().push(query.to_string());
        }
    }
}

/// Runs `f` on `conn` and returns its result with the text of every statement it sent, in
/// order. The connection's instrumentation is replaced by the recorder for the call and by
/// Diesel's default one afterwards. On a connection in pooler mode (whose marker lives in that
/// slot) statements stay unnamed during the call, but session locks are not refused then; the
/// mode is set again afterwards.
pub fn capture<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> T,
) -> (T, Vec<String>) {
    let pooler_mode = upsert_kit::db::is_pooler_mode(conn);
    let seen = Arc::new(Mutex::new(Vec::new()));
    conn.set_instrumentation(Recorder(Arc::clone(&seen)));
    let value = f(conn);
    conn.set_instrumentation(diesel::connection::get_default_instrumentation());
    if pooler_mode {
        upsert_kit::db::set_pooler_mode(conn);
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (value, seen)
}

/// The statements among `statements` that touch `table` without naming every column of `key`:
/// a `SELECT`, `UPDATE` or `DELETE` must compare each key column to a value (`col = $n`,
/// `col = ANY(…)`, qualified or quoted alike), an `INSERT` must list it among its columns.
/// `BEGIN`, `COMMIT`, savepoints and statements on other tables are left out.
pub fn unrouted<'s>(statements: &'s [String], table: &str, key: &[&str]) -> Vec<&'s str> {
    statements
        .iter()
        .map(|s| s.split("-- binds:").next().unwrap_or(s).trim())
        .filter(|sql| touches(sql, table))
        .filter(|sql| !key.iter().all(|column| names(sql, column)))
        .collect()
}

fn words(sql: &str) -> Vec<String> {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn touches(sql: &str, table: &str) -> bool {
    let w = words(sql);
    w.windows(2)
        .any(|p| matches!(p[0].as_str(), "from" | "into" | "update" | "join") && p[1] == table)
}

/// `column` compared with `=` to a value, or listed as an inserted column.
fn names(sql: &str, column: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let is_insert = lower.trim_start().starts_with("insert") || lower.contains(") insert into");
    let forms = [format!("\"{column}\""), column.to_owned()];
    let mut found = false;
    for form in &forms {
        let mut from = 0;
        while let Some(i) = lower[from..].find(form.as_str()) {
            let at = from + i;
            from = at + form.len();
            let before = lower[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let after = lower[from..].trim_start();
            if after.starts_with("= $") || after.starts_with("= any(") || after.starts_with("=$") {
                found = true;
            }
            if is_insert && (after.starts_with(',') || after.starts_with(')')) {
                found = true;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_routed_when_it_compares_every_key_column() {
        let s = |x: &str| x.to_owned();
        let statements = [
            s("UPDATE \"t\" SET \"n\" = \"n\" + $1 WHERE \"t\".\"account\" = $2 AND \"t\".\"id\" = $3 -- binds: [1, 2, 3]"),
            s("UPDATE t SET n = n + $1 WHERE id = $2"),
            s("INSERT INTO t (account, id) VALUES ($1, $2)"),
            s("SELECT id FROM other WHERE id = $1"),
            s("DELETE FROM t WHERE my_account = $1 AND id = $2"),
        ];
        assert_eq!(
            unrouted(&statements, "t", &["account", "id"]),
            [
                "UPDATE t SET n = n + $1 WHERE id = $2",
                "DELETE FROM t WHERE my_account = $1 AND id = $2"
            ]
        );
    }
}

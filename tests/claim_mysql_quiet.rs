//! The MySQL/MariaDB claim while claims do not contend: two round trips, the claiming `UPDATE`
//! at the session's isolation and the read of what it took, with no `SET TRANSACTION` before
//! it. A test binary of its own: the claims' contention window is the process's, and the
//! concurrent claims of tests/claim.rs would open it.

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use std::sync::{Arc, Mutex};
use upsert_kit::claim::{ClaimQueue, Queue};
use upsert_kit_support::TestMysql;

diesel::table! {
    tasks (id) {
        id -> BigInt,
        name -> Text,
    }
}

#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = tasks)]
struct Task {
    name: String,
}

impl ClaimQueue for Task {
    type Table = tasks::table;
}

/// The text of every statement a connection starts.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

impl Instrumentation for Statements {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            self.0.lock().unwrap().push(query.to_string());
        }
    }
}

impl Statements {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn an_uncontended_claim_is_two_statements_at_the_sessions_isolation() {
    let db = TestMysql::with_sql(upsert_kit_support::mysql::TASKS_TABLE);
    diesel::sql_query("INSERT INTO tasks (name) VALUES ('first'), ('second')")
        .execute(&mut db.conn())
        .unwrap();
    let mut conn = db.conn();
    let statements = Statements::default();
    conn.set_instrumentation(statements.clone());
    let queue = Queue::<Task>::new("worker-1").unwrap();
    for expected in ["first", "second"] {
        statements.take();
        let claimed = queue.claim(&mut conn, 1).unwrap();
        let sent = statements.take();
        assert_eq!(sent.len(), 2, "the claim and the read: {sent:#?}");
        assert!(
            sent.iter().all(|s| !s.contains("ISOLATION")),
            "no isolation statement: {sent:#?}"
        );
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].item.name, expected);
        queue.complete(&mut conn, &claimed[0]).unwrap();
    }
    statements.take();
    assert!(queue.claim(&mut conn, 1).unwrap().is_empty());
    assert_eq!(statements.take().len(), 1, "nothing taken, nothing to read");
}

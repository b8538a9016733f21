//! What the primitives tell an operator (README "Observability"): a span per call with
//! OpenTelemetry's database fields, the outcome, counts, lock waits and the error's class, on
//! every backend; never a key or a row's value, even when the key is a secret; and, with the
//! feature `metrics` (on in the tests), the counters and histograms of the README's table.
//!
//! Each backend runs the same sequence of calls (`sequence!`); the servers add locks and claims.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use upsert_kit::idempotency::{increment_once, IdempotencyKey};
use upsert_kit::lock::{exclusive_transaction, LockKey};
use upsert_kit::tables::{create_tables, IdempotencyKeys, Quotas};
use upsert_kit::upsert::Changed;
use upsert_kit::{atomic_upsert, bulk_upsert, get_or_create, quota, Error, Upsert, UpsertModel};
use upsert_kit_support::spans::{capture, Captured};

/// A key that is a secret (an API key used as an idempotency key, a row key, a lock name): it
/// must appear in no span and no event.
const SECRET: &str = "sk_live_51HkQsEcReT";

diesel::table! {
    obs_items (sku) {
        sku -> Text,
        name -> Text,
    }
}

diesel::table! {
    obs_counts (name) {
        name -> Text,
        hits -> BigInt,
    }
}

/// The same DDL on every backend.
const SQL: &str =
    "CREATE TABLE obs_items (sku VARCHAR(100) PRIMARY KEY, name VARCHAR(100) NOT NULL);
     CREATE TABLE obs_counts (name VARCHAR(100) PRIMARY KEY, hits BIGINT NOT NULL DEFAULT 0);";

#[derive(Debug, Clone, Insertable, UpsertModel)]
#[diesel(table_name = obs_items)]
#[upsert(key(sku))]
struct Item {
    sku: String,
    name: String,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = obs_items)]
#[allow(dead_code)]
struct Stored {
    sku: String,
    name: String,
}

upsert_kit::counter! {
    table = obs_counts, key = (name: String), amounts = (hits);
    pub struct Hits;
}

fn item(sku: &str, name: &str) -> Item {
    Item {
        sku: sku.into(),
        name: name.into(),
    }
}

/// The outcomes recorded on the spans named `name`, in order (`-` for none).
fn outcomes(captured: &Captured, name: &str) -> Vec<String> {
    let spans = captured.named(name);
    spans
        .iter()
        .map(|s| s.field("outcome").unwrap_or("-").to_owned())
        .collect()
}

/// Checks the OpenTelemetry fields of every span named `name`.
fn assert_fields(captured: &Captured, name: &str, system: &str, table: &str) {
    let spans = captured.named(name);
    assert!(!spans.is_empty(), "no span {name}: {captured:#?}");
    for span in spans {
        assert_eq!(span.field("db.system.name"), Some(system), "{span:?}");
        assert_eq!(span.field("db.operation.name"), Some(name), "{span:?}");
        assert_eq!(span.field("db.collection.name"), Some(table), "{span:?}");
        let otel = format!("{name} {table}");
        assert_eq!(span.field("otel.name"), Some(otel.as_str()), "{span:?}");
    }
}

/// Every metric recorded: name, labels, and a counter's count or a histogram's number of samples.
type Snapshot = Vec<(String, Vec<(String, String)>, u64)>;

/// One metric's value in a snapshot: a counter's count or a histogram's number of samples.
fn metric(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Runs `f` with a recording metrics backend of this thread; returns every metric.
fn recorded(f: impl FnOnce()) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, f);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let value = match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => n,
                (MetricKind::Histogram, DebugValue::Histogram(samples)) => samples.len() as u64,
                (_, DebugValue::Gauge(_)) | (_, _) => 0,
            };
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

/// The calls every backend runs, on `$conn`, with `$system` its `db.system.name`.
macro_rules! sequence {
    ($conn:expr, $system:expr) => {{
        let conn = $conn;
        let system: &str = $system;
        conn.batch_execute(SQL).unwrap();
        create_tables(conn).unwrap();
        let quota_row = format!(
            "INSERT INTO upsert_kit_quotas (quota_key, quota_limit) VALUES ('{SECRET}', 1)"
        );
        conn.batch_execute(&quota_row).unwrap();
        let now = chrono::Utc::now().naive_utc();
        let key = IdempotencyKey::new(SECRET).unwrap();

        let run = || {
            let mut calls = || -> upsert_kit::Result<()> {
                atomic_upsert(conn, &item(SECRET, SECRET))?;
                atomic_upsert(conn, &item(SECRET, "renamed"))?;
                Upsert::new(&item(SECRET, "renamed"))
                    .update_if(Changed::<obs_items::name>::default())
                    .execute(conn)?;
                let invalid = atomic_upsert(conn, &item("", SECRET));
                assert!(
                    matches!(invalid, Err(Error::InvalidInput(_))),
                    "{invalid:?}"
                );
                let rows = [
                    item("x", "x"),
                    item(SECRET, SECRET),
                    item("y", "y"),
                    item("x", "x2"),
                ];
                bulk_upsert(conn, &rows)?;
                get_or_create::<_, _, Stored>(conn, &item("z", SECRET))?;
                get_or_create::<_, _, Stored>(conn, &item("z", SECRET))?;
                upsert_kit::counter::upsert_increment::<Hits, _>(conn, &SECRET.to_owned(), [1])?;
                let counter = SECRET.to_owned();
                increment_once::<IdempotencyKeys, Hits, _>(conn, &key, &counter, [2], now)?;
                increment_once::<IdempotencyKeys, Hits, _>(conn, &key, &counter, [2], now)?;
                quota::try_consume::<Quotas, _>(conn, &SECRET.to_owned(), 1, now)?;
                let refused = quota::try_consume::<Quotas, _>(conn, &SECRET.to_owned(), 1, now);
                assert!(
                    matches!(refused, Err(Error::QuotaExceeded { .. })),
                    "{refused:?}"
                );
                exclusive_transaction(conn, LockKey::new(SECRET, SECRET), |_| Ok::<_, Error>(()))?;
                Ok(())
            };
            calls().unwrap();
        };
        let mut captured = None;
        let snapshot = recorded(|| captured = Some(capture(run).1));
        let captured = captured.unwrap();

        assert_fields(&captured, "upsert", system, "obs_items");
        assert_eq!(
            outcomes(&captured, "upsert"),
            ["inserted", "updated", "unchanged", "-"]
        );
        let invalid = captured.named("upsert")[3];
        assert_eq!(invalid.field("error.type"), Some("invalid_input"));

        assert_fields(&captured, "bulk_upsert", system, "obs_items");
        let bulk = captured.named("bulk_upsert")[0];
        let counts = ["rows", "inserted", "updated", "unchanged"].map(|f| bulk.field(f).unwrap());
        assert_eq!(counts, ["3", "2", "1", "0"]);

        assert_fields(&captured, "get_or_create", system, "obs_items");
        assert_eq!(outcomes(&captured, "get_or_create"), ["created", "found"]);
        assert_fields(&captured, "upsert_increment", system, "obs_counts");
        assert_eq!(outcomes(&captured, "upsert_increment"), ["applied"]);
        assert_fields(&captured, "increment_once", system, "obs_counts");
        assert_eq!(
            outcomes(&captured, "increment_once"),
            ["applied", "replayed"]
        );
        assert_fields(&captured, "quota_consume", system, "upsert_kit_quotas");
        assert_eq!(
            outcomes(&captured, "quota_consume"),
            ["accepted", "refused"]
        );
        let refused = captured.named("quota_consume")[1];
        assert_eq!(refused.field("error.type"), Some("quota_exceeded"));
        let exclusive = captured.named("exclusive_transaction");
        assert_eq!(
            exclusive.len(),
            1,
            "exclusive: {:?}",
            captured.spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        assert_eq!(exclusive[0].field("error.type"), None);

        let text = captured.text();
        assert!(
            !text.contains(SECRET) && !text.contains("51HkQ"),
            "a secret in the spans:\n{text}"
        );

        // The metrics of the same calls.
        let up = [("operation", "upsert"), ("table", "obs_items")];
        for (outcome, n) in [
            ("inserted", 1),
            ("updated", 1),
            ("unchanged", 1),
            ("error", 1),
        ] {
            let labels = [up[0], up[1], ("outcome", outcome)];
            assert_eq!(
                metric(&snapshot, "upsert_kit_calls_total", &labels),
                n,
                "{outcome}"
            );
        }
        let errors = [up[0], up[1], ("class", "invalid_input")];
        assert_eq!(
            metric(&snapshot, "upsert_kit_errors_total", &errors),
            1,
            "errors"
        );
        let bulk = [("operation", "bulk_upsert"), ("table", "obs_items")];
        for (outcome, n) in [("inserted", 2), ("updated", 1), ("unchanged", 0)] {
            let labels = [bulk[0], bulk[1], ("outcome", outcome)];
            assert_eq!(
                metric(&snapshot, "upsert_kit_outcomes_total", &labels),
                n,
                "{outcome}"
            );
        }
        let upserts = [up[0], up[1], ("outcome", "inserted")];
        assert_eq!(
            metric(&snapshot, "upsert_kit_outcomes_total", &upserts),
            1,
            "upsert outcomes"
        );
        let calls = [("operation", "upsert"), ("table", "obs_items")];
        assert_eq!(
            metric(&snapshot, "upsert_kit_call_duration_seconds", &calls),
            4
        );
        let counts = [("table", "obs_counts")];
        assert_eq!(
            metric(&snapshot, "upsert_kit_idempotency_replays_total", &counts),
            1
        );
        let quotas = [("table", "upsert_kit_quotas")];
        assert_eq!(
            metric(&snapshot, "upsert_kit_quota_refusals_total", &quotas),
            1
        );
        for (name, labels, _) in &snapshot {
            let all = format!("{name} {labels:?}");
            assert!(
                !all.contains(SECRET) && !all.contains("51HkQ"),
                "a secret in {all}"
            );
        }
        captured
    }};
}

/// A coalescing writer's batch is a span of its own (`coalesce_batch`: its calls, whether
/// another batch was in flight, how it ended) and a call in the metrics; a batch whose only
/// call failed on its own (a constraint) wrote nothing: `taken_out`. No key in any of it.
#[test]
fn a_coalesced_batch_is_told_in_a_span_and_in_the_metrics_without_its_keys() {
    let db = upsert_kit_support::TestSqlite::new();
    db.conn().batch_execute(SQL).unwrap();
    let writer = upsert_kit::coalesce::Coalescer::new(db.pool(2));
    let mut snapshot = Snapshot::new();
    let ((), captured) = capture(|| {
        snapshot = recorded(|| {
            let told = writer.upsert(item(SECRET, "first")).unwrap();
            assert_eq!(told, upsert_kit::UpsertOutcome::Inserted);
            // A NULL name: the call's own constraint; its batch writes nothing.
            let refused = writer.run_atomic(|c: &mut diesel::SqliteConnection| {
                diesel::sql_query("INSERT INTO obs_items (sku, name) VALUES ('other', NULL)")
                    .execute(c)?;
                Ok(())
            });
            assert!(
                matches!(refused, Err(Error::Constraint { .. })),
                "{refused:?}"
            );
        });
    });
    let batches = captured.named("coalesce_batch");
    assert_eq!(batches.len(), 2, "{captured:#?}");
    for span in &batches {
        assert_eq!(span.field("db.system.name"), Some("sqlite"));
        assert_eq!(span.field("rows"), Some("1"));
        assert_eq!(span.field("overlapped"), Some("false"));
    }
    assert_eq!(
        outcomes(&captured, "coalesce_batch"),
        ["committed", "taken_out"]
    );
    assert!(!captured.text().contains(SECRET), "a key reached a span");
    let labels = [("operation", "coalesce_batch"), ("outcome", "committed")];
    assert_eq!(metric(&snapshot, "upsert_kit_calls_total", &labels), 1);
    let labels = [("operation", "coalesce_batch"), ("outcome", "taken_out")];
    assert_eq!(metric(&snapshot, "upsert_kit_calls_total", &labels), 1);
}

#[test]
fn sqlite_calls_are_told_in_spans_and_metrics_without_their_keys() {
    let db = upsert_kit_support::TestSqlite::new();
    sequence!(&mut db.conn(), "sqlite");
}

#[test]
fn postgresql_calls_are_told_in_spans_and_metrics_without_their_keys() {
    let db = upsert_kit_support::TestDb::new();
    sequence!(&mut db.conn(), "postgresql");
    server::locks_and_claims(&mut db.conn(), "postgresql", server::PG_TASKS);
}

#[test]
fn mysql_calls_are_told_in_spans_and_metrics_without_their_keys() {
    let db = upsert_kit_support::TestMysql::new();
    sequence!(&mut db.conn(), "mysql");
    server::locks_and_claims(&mut db.conn(), "mysql", server::MYSQL_TASKS);
}

/// Session locks and claims, on PostgreSQL and MySQL/MariaDB.
mod server {
    use super::*;
    use upsert_kit::claim::{ClaimConnection, ClaimQueue, Queue};
    use upsert_kit::conn::WriteConnection;
    use upsert_kit::lock::{with_lock, LockSession};

    diesel::table! {
        obs_tasks (id) {
            id -> BigInt,
            name -> Text,
        }
    }

    #[derive(Debug, QueryableByName)]
    #[diesel(table_name = obs_tasks)]
    #[allow(dead_code)]
    pub struct Task {
        name: String,
    }

    impl ClaimQueue for Task {
        type Table = obs_tasks::table;
    }

    pub const PG_TASKS: &str = "CREATE TABLE obs_tasks (id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
        attempts INT NOT NULL DEFAULT 0, locked_until TIMESTAMPTZ, holder TEXT, last_error TEXT);
        INSERT INTO obs_tasks (name) VALUES ('a'), ('b');";
    pub const MYSQL_TASKS: &str = "CREATE TABLE obs_tasks (id BIGINT AUTO_INCREMENT PRIMARY KEY,
        name TEXT NOT NULL, status VARCHAR(16) NOT NULL DEFAULT 'pending',
        attempts INT NOT NULL DEFAULT 0, locked_until DATETIME(6) NULL,
        holder VARCHAR(200) NULL, last_error TEXT NULL);
        INSERT INTO obs_tasks (name) VALUES ('a'), ('b');";

    pub fn locks_and_claims<C>(conn: &mut C, system: &str, tasks: &str)
    where
        C: WriteConnection<Raw = C> + ClaimConnection<Task> + SimpleConnection,
        for<'a> &'a mut C: LockSession,
    {
        conn.batch_execute(tasks).unwrap();
        // The worker's name is the queue's holder: it is recorded nowhere in the spans either.
        let queue = Queue::<Task>::new(SECRET).unwrap().max_attempts(1);
        let (_, captured) = capture(|| {
            with_lock(&mut *conn, LockKey::new(SECRET, 1), |_| Ok::<_, Error>(())).unwrap();
            let claims = queue.claim(conn, 10).unwrap();
            assert_eq!(claims.len(), 2);
            queue.complete(conn, &claims[0]).unwrap();
            queue.fail(conn, &claims[1], SECRET).unwrap();
            queue.state(conn).unwrap();
        });
        let lock = captured.named("lock");
        assert_eq!(lock.len(), 1);
        assert_eq!(lock[0].field("db.system.name"), Some(system));
        assert_eq!(lock[0].field("outcome"), Some("acquired"));
        // A lock has no table: no `db.collection.name`, and `otel.name` is the operation.
        assert_eq!(lock[0].field("db.collection.name"), None);
        assert_eq!(lock[0].field("otel.name"), Some("lock"));
        let waited: f64 = lock[0].field("wait_ms").unwrap().parse().unwrap();
        assert!(waited >= 0.0);
        assert_fields(&captured, "claim", system, "obs_tasks");
        assert_eq!(captured.named("claim")[0].field("rows"), Some("2"));
        assert_fields(&captured, "claim_complete", system, "obs_tasks");
        assert_fields(&captured, "claim_fail", system, "obs_tasks");
        assert_eq!(outcomes(&captured, "claim_fail"), ["parked"]);
        let parked = captured
            .events
            .iter()
            .find(|e| e.span.as_deref() == Some("claim_fail"));
        assert_eq!(
            parked.map(|e| e.level),
            Some(tracing::Level::WARN),
            "{captured:#?}"
        );
        assert_fields(&captured, "claim_state", system, "obs_tasks");
        let text = captured.text();
        assert!(
            !text.contains(SECRET) && !text.contains("51HkQ"),
            "a secret in the spans:\n{text}"
        );
    }
}

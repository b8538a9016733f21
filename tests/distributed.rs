//! What distributed PostgreSQL (Citus) needs of the primitives, checked on plain PostgreSQL
//! (docs/citus.md): every statement names the full declared key (which here includes a tenant
//! column, `account`, as a distribution column would be), and claims on a queue with a tenant
//! column claim within named tenants, one statement per tenant.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upsert_kit::claim::{ClaimQueue, Queue, Tenant};
use upsert_kit::get_or_create::{get_or_create, Obtained};
use upsert_kit::{atomic_upsert, bulk_upsert, counter, quota, upsert_model, Error};
use upsert_kit_support::citus::{capture, distribution_problems, unrouted, Placement};
use upsert_kit_support::{race, TestDb};

diesel::table! {
    daily_calls (account, day) {
        account -> BigInt,
        day -> Date,
        calls -> BigInt,
    }
}

upsert_kit::counter! {
    table = daily_calls, key = (account: i64, day: NaiveDate), amounts = (calls);
    pub struct DailyCalls;
}

diesel::table! {
    plans (account, plan) {
        account -> BigInt,
        plan -> Text,
        plan_limit -> BigInt,
        used -> BigInt,
        held -> BigInt,
    }
}

diesel::table! {
    plan_holds (account, hold_id) {
        hold_id -> BigInt,
        account -> BigInt,
        plan -> Text,
        amount -> BigInt,
        until -> Timestamp,
    }
}

upsert_kit::quota! {
    table = plans, key = (account: i64, plan: String), limit = plan_limit, used = used, reserved = held;
    reservations = plan_holds(hold_id, amount, until);
    pub struct Plans;
}

diesel::table! {
    profiles (account, handle) {
        id -> BigInt,
        account -> BigInt,
        handle -> Text,
        bio -> Text,
    }
}

upsert_model! {
    table = profiles, key = (account, handle);
    #[derive(Debug, Clone)]
    pub struct NewProfile {
        pub account: i64,
        pub handle: String,
        pub bio: String,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = profiles)]
struct Profile {
    account: i64,
    handle: String,
    bio: String,
}

diesel::table! {
    account_tasks (account, id) {
        id -> Int8,
        account -> Int8,
        name -> Text,
    }
}

/// A queue whose tenant column is the account: every statement filters by it.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = account_tasks)]
struct AccountTask {
    name: String,
}

impl ClaimQueue for AccountTask {
    type Table = account_tasks::table;
    const TENANT: Option<&'static str> = Some("account");
}

/// Keys and foreign keys that include `account` everywhere (distributable by it).
const SQL: &str = "
CREATE TABLE daily_calls (account BIGINT, day DATE, calls BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account, day));
CREATE TABLE plans (account BIGINT, plan TEXT, plan_limit BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0, held BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (account, plan),
    CHECK (used + held <= plan_limit));
CREATE TABLE plan_holds (hold_id BIGSERIAL, account BIGINT NOT NULL, plan TEXT NOT NULL,
    amount BIGINT NOT NULL, until TIMESTAMP NOT NULL, PRIMARY KEY (account, hold_id),
    FOREIGN KEY (account, plan) REFERENCES plans (account, plan));
CREATE TABLE profiles (id BIGSERIAL, account BIGINT NOT NULL, handle TEXT NOT NULL,
    bio TEXT NOT NULL, PRIMARY KEY (account, id), UNIQUE (account, handle));
CREATE TABLE account_tasks (id BIGSERIAL, account BIGINT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INT NOT NULL DEFAULT 0,
    locked_until TIMESTAMPTZ, holder TEXT, last_error TEXT, PRIMARY KEY (account, id));
CREATE INDEX account_tasks_due ON account_tasks (account, id) WHERE status IN ('pending', 'retry');
INSERT INTO plans (account, plan, plan_limit) VALUES (1, 'api', 100), (2, 'api', 100);";

const TABLES: [(&str, Placement<'static>); 5] = [
    ("daily_calls", Placement::Distributed("account")),
    ("plans", Placement::Distributed("account")),
    ("plan_holds", Placement::Distributed("account")),
    ("profiles", Placement::Distributed("account")),
    ("account_tasks", Placement::Distributed("account")),
];

fn db() -> TestDb {
    let db = TestDb::with_sql(SQL);
    assert_eq!(
        distribution_problems(&mut db.conn(), &TABLES),
        Vec::<String>::new()
    );
    db
}

fn now() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap()
}

fn tasks(conn: &mut PgConnection, account: i64, n: i32) {
    conn.batch_execute(&format!(
        "INSERT INTO account_tasks (account, name) \
         SELECT {account}, 'task-{account}-' || g FROM generate_series(1, {n}) g"
    ))
    .unwrap();
}

fn sql_only(statements: &[String]) -> Vec<String> {
    statements
        .iter()
        .map(|s| s.split("-- binds:").next().unwrap_or(s).trim().to_owned())
        .collect()
}

fn assert_routed(statements: &[String], table: &str, key: &[&str]) {
    let on_table: Vec<_> = statements
        .iter()
        .filter(|s| s.contains(&format!("\"{table}\"")))
        .collect();
    assert!(
        !on_table.is_empty(),
        "no statement on {table}: {statements:#?}"
    );
    let missing = unrouted(statements, table, key);
    assert!(
        missing.is_empty(),
        "statements on {table} without {key:?}: {missing:#?}"
    );
    for s in on_table {
        eprintln!("{table} by {key:?}: {s}");
    }
}

#[test]
fn every_statement_of_counters_quotas_upserts_and_get_or_create_names_the_full_key() {
    let db = db();
    let mut conn = db.conn();
    let day = now().date();
    let ttl = Duration::from_secs(60);
    let ((), statements) = capture(&mut conn, |c| {
        assert_eq!(
            counter::upsert_increment::<DailyCalls, _>(c, &(1, day), [3]).unwrap(),
            [3]
        );
        assert_eq!(
            counter::increment::<DailyCalls, _>(c, &(1, day), [2]).unwrap(),
            Some([5])
        );

        let key = (1_i64, "api".to_owned());
        let held = quota::reserve::<Plans, _>(c, &key, 40, ttl, now()).unwrap();
        quota::commit(c, &held, 30, now()).unwrap();
        let held = quota::reserve::<Plans, _>(c, &key, 10, ttl, now()).unwrap();
        assert!(quota::release(c, &held).unwrap());
        quota::try_consume::<Plans, _>(c, &key, 5, now()).unwrap();
        // Refused: the key's expired reservations are swept, then the usage is read back.
        let _expired = quota::reserve::<Plans, _>(c, &key, 60, ttl, now()).unwrap();
        let later = now() + chrono::Duration::seconds(120);
        assert!(matches!(
            quota::try_consume::<Plans, _>(c, &key, 100, later),
            Err(Error::QuotaExceeded { .. })
        ));

        let row = |handle: &str, bio: &str| NewProfile {
            account: 1,
            handle: handle.to_owned(),
            bio: bio.to_owned(),
        };
        atomic_upsert(c, &row("ann", "a")).unwrap();
        bulk_upsert(c, &[row("ann", "b"), row("bob", "c")]).unwrap();
        let got: Obtained<Profile> = get_or_create(c, &row("cyd", "d")).unwrap();
        assert!(got.created);
        let got: Obtained<Profile> = get_or_create(c, &row("cyd", "e")).unwrap();
        assert_eq!((got.created, got.row.bio.as_str()), (false, "d"));
    });
    let statements = sql_only(&statements);
    assert_routed(&statements, "daily_calls", &["account", "day"]);
    assert_routed(&statements, "plans", &["account", "plan"]);
    assert_routed(&statements, "plan_holds", &["account", "plan"]);
    assert_routed(&statements, "profiles", &["account", "handle"]);
}

#[test]
fn claims_of_a_queue_with_a_tenant_column_name_the_tenant_in_every_statement() {
    let db = db();
    let mut conn = db.conn();
    tasks(&mut conn, 1, 3);
    tasks(&mut conn, 2, 3);
    let queue = Queue::<AccountTask>::new("w1")
        .unwrap()
        .lease(Duration::from_millis(1))
        .tenant(2_i64)
        .tenant(1_i64);
    let (names, statements) = capture(&mut conn, |c| {
        // Across tenants: one statement per tenant, in the order named, until the limit.
        let claims = queue.claim(c, 4).unwrap();
        let tenants: Vec<_> = claims.iter().map(|c| c.tenant.clone()).collect();
        assert_eq!(
            tenants,
            [2, 2, 2, 1].map(|t| Some(Tenant::BigInt(t))).to_vec()
        );
        let names: Vec<String> = claims.iter().map(|c| c.item.name.clone()).collect();
        queue.complete(c, &claims[0]).unwrap();
        queue.fail(c, &claims[1], "boom").unwrap();
        let mut third = claims[2].clone();
        // The lease of 1 ms has passed: extended while not reaped, then reaped with the fourth.
        queue.extend(c, &mut third).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let reaped = queue.reap_expired(c).unwrap();
        assert_eq!(reaped.requeued, 2);
        assert!(matches!(
            queue.complete(c, &claims[3]),
            Err(Error::NotFound(_))
        ));
        names
    });
    assert_eq!(names, ["task-2-1", "task-2-2", "task-2-3", "task-1-1"]);
    let statements = sql_only(&statements);
    assert_eq!(statements.len(), 2 + 3 + 2 + 1, "{statements:#?}");
    assert_routed(&statements, "account_tasks", &["account"]);

    // Claims within one tenant never take another tenant's items.
    let only_1 = Queue::<AccountTask>::new("w2").unwrap().tenant(1_i64);
    let claimed = only_1.claim(&mut conn, 10).unwrap();
    assert!(claimed.iter().all(|c| c.item.name.starts_with("task-1-")));
    assert_eq!(
        claimed.len(),
        3,
        "task-1-1 (reaped) and the two never claimed"
    );
}

#[test]
fn a_queue_with_a_tenant_column_refuses_to_claim_without_a_tenant() {
    let db = db();
    let mut conn = db.conn();
    tasks(&mut conn, 1, 1);
    let queue = Queue::<AccountTask>::new("w").unwrap();
    for result in [
        queue.claim(&mut conn, 1).map(|_| ()),
        queue.reap_expired(&mut conn).map(|_| ()),
    ] {
        match result {
            Err(Error::InvalidInput(e)) => assert_eq!(e.field, "tenant"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}

#[test]
#[should_panic(expected = "declares no tenant column")]
fn naming_a_tenant_of_a_queue_without_a_tenant_column_panics() {
    #[derive(Debug, QueryableByName)]
    #[diesel(table_name = account_tasks)]
    struct Untenanted {
        #[allow(dead_code)]
        name: String,
    }
    impl ClaimQueue for Untenanted {
        type Table = account_tasks::table;
    }
    let _ = Queue::<Untenanted>::new("w").unwrap().tenant(1_i64);
}

#[test]
fn eight_workers_claiming_across_four_tenants_take_each_item_exactly_once() {
    const WORKERS: usize = 8;
    let db = db();
    let mut conn = db.conn();
    for account in 1..=4 {
        tasks(&mut conn, account, 100);
    }
    let conns = Arc::new(Mutex::new(
        (0..WORKERS).map(|_| db.conn()).collect::<Vec<_>>(),
    ));
    let taken: Vec<Vec<String>> = race(WORKERS, move |i| {
        let mut conn = conns.lock().unwrap().pop().unwrap();
        // Each worker names the tenants in its own order.
        let mut queue = Queue::<AccountTask>::new(format!("w{i}")).unwrap();
        for k in 0..4 {
            queue = queue.tenant(((i + k) % 4 + 1) as i64);
        }
        let mut mine = Vec::new();
        loop {
            let claims = queue.claim(&mut conn, 3).unwrap();
            if claims.is_empty() {
                return mine;
            }
            for claim in claims {
                queue.complete(&mut conn, &claim).unwrap();
                mine.push(claim.item.name);
            }
        }
    });
    let all: Vec<&String> = taken.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!((all.len(), distinct.len()), (400, 400));
}

diesel::table! {
    request_log (request_id) {
        request_id -> Text,
        request_hash -> Text,
        response -> Nullable<Text>,
        first_seen -> Timestamp,
    }
}

upsert_kit::ledger! {
    table = request_log, key = request_id, fingerprint = request_hash, result = response, created_at = first_seen;
    pub struct RequestLog;
}

/// The unique keys renamed (as Citus reports a local shard's: with a shard suffix) or replaced
/// by unique indexes that are no constraint: nothing depends on a constraint's name.
#[test]
fn replays_and_get_or_create_hold_whatever_the_unique_keys_are_called() {
    use upsert_kit::idempotency::{run, IdempotencyKey};
    for change in [
        "ALTER TABLE request_log RENAME CONSTRAINT request_log_pkey TO request_log_pkey_102208; \
         ALTER TABLE profiles RENAME CONSTRAINT profiles_account_handle_key TO profiles_key_102240",
        "ALTER TABLE request_log DROP CONSTRAINT request_log_pkey; \
         CREATE UNIQUE INDEX request_log_keys ON request_log (request_id); \
         ALTER TABLE profiles DROP CONSTRAINT profiles_account_handle_key; \
         CREATE UNIQUE INDEX profile_handles ON profiles (account, handle)",
    ] {
        let db = TestDb::with_sql(&format!(
            "{SQL}; CREATE TABLE request_log (request_id TEXT PRIMARY KEY, request_hash TEXT NOT NULL, \
             response TEXT, first_seen TIMESTAMP NOT NULL); {change}"
        ));
        let mut conn = db.conn();
        let key = IdempotencyKey::new("req-1").unwrap();
        let mut runs = 0;
        for _ in 0..3 {
            let done = run::<RequestLog, _, _, _>(&mut conn, &key, "f", now(), |_| {
                runs += 1;
                Ok(runs)
            })
            .unwrap();
            assert_eq!(done.value, 1, "{change}");
        }
        assert_eq!(runs, 1, "{change}");

        let row = |bio: &str| NewProfile {
            account: 1,
            handle: "ann".into(),
            bio: bio.into(),
        };
        let first: Obtained<Profile> = get_or_create(&mut conn, &row("a")).unwrap();
        let again: Obtained<Profile> = get_or_create(&mut conn, &row("b")).unwrap();
        assert!(first.created && !again.created, "{change}");
        assert_eq!(again.row, first.row, "{change}");
        assert_eq!(
            atomic_upsert(&mut conn, &row("c")).unwrap(),
            upsert_kit::UpsertOutcome::Updated,
            "{change}"
        );
    }
}

/// The library's ready-made tables are distributable by their keys, whether created by the
/// library (twice: it is idempotent) or by the migrations.
#[test]
fn the_ready_made_tables_keys_include_their_distribution_column() {
    use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
    let tables = [
        ("upsert_kit_idempotency_keys", Placement::Distributed("key")),
        ("upsert_kit_quotas", Placement::Distributed("quota_key")),
        (
            "upsert_kit_reservations",
            Placement::Distributed("quota_key"),
        ),
    ];
    let created = TestDb::new();
    let mut conn = created.conn();
    upsert_kit::tables::create_tables(&mut conn).unwrap();
    upsert_kit::tables::create_tables(&mut conn).unwrap();
    assert_eq!(
        distribution_problems(&mut conn, &tables),
        Vec::<String>::new()
    );
    let migrated = TestDb::migrated(MIGRATIONS);
    let mut conn = migrated.conn();
    assert_eq!(
        distribution_problems(&mut conn, &tables),
        Vec::<String>::new()
    );
    // The first migration alone: the reservations' surrogate key.
    diesel_migrations::MigrationHarness::revert_last_migration(&mut conn, MIGRATIONS).unwrap();
    assert_eq!(
        distribution_problems(&mut conn, &tables),
        ["upsert_kit_reservations: constraint upsert_kit_reservations_pkey on (id) does not include the distribution column quota_key"]
    );
}

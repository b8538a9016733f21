//! The primitives through PgBouncer 1.18 in transaction pool mode (RELIABILITY cases 28–30):
//! with the crate's pooler mode on they pass; without it named prepared statements fail the
//! way users of hosted PostgreSQL see it, and session locks land on the wrong client. The
//! harness starts the PgBouncer (`upsert_kit_support::pgbouncer`); without one these tests
//! fail and say how to provide it.

mod fixture;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use fixture::{stats, Stats};
use serde_json::json;
use upsert_kit::claim::{ClaimQueue, Queue};
use upsert_kit::counter::upsert_increment;
use upsert_kit::db::{connect_pg, is_pooler_mode, pg_pool};
use upsert_kit::get_or_create::get_or_create;
use upsert_kit::lock::{self, try_xact_lock, xact_lock, LockKey};
use upsert_kit::quota::try_consume;
use upsert_kit::retry::Retry;
use upsert_kit::{atomic_upsert, bulk_upsert, upsert_model, Error, UpsertOutcome};
use upsert_kit_support::pooler::PgBouncer;
use upsert_kit_support::{admin_url, race, TestDb};

diesel::table! {
    hits (page) {
        page -> Text,
        views -> BigInt,
    }
}

upsert_kit::counter! {
    table = hits, key = (page: String), amounts = (views);
    pub struct Hits;
}

diesel::table! {
    seats (event) {
        event -> Text,
        seat_limit -> BigInt,
        taken -> BigInt,
        held -> BigInt,
    }
}

diesel::table! {
    seat_holds (hold_id) {
        hold_id -> BigInt,
        event -> Text,
        seats -> BigInt,
        until -> Timestamp,
    }
}

upsert_kit::quota! {
    table = seats, key = (event: String), limit = seat_limit, used = taken, reserved = held;
    reservations = seat_holds(hold_id, seats, until);
    pub struct Seats;
}

diesel::table! {
    tasks (id) {
        id -> Int8,
        name -> Text,
        status -> Text,
        attempts -> Int4,
        locked_until -> Nullable<Timestamptz>,
        holder -> Nullable<Text>,
        last_error -> Nullable<Text>,
    }
}

#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = tasks)]
struct Task {
    #[allow(dead_code)]
    name: String,
}

impl ClaimQueue for Task {
    type Table = tasks::table;
}

upsert_model! {
    table = stats, key = (stats_type);
    #[derive(Debug, Clone)]
    pub struct NewStats {
        pub stats_type: String,
        pub data: serde_json::Value,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = stats)]
struct StoredStats {
    id: i64,
    stats_type: String,
    data: serde_json::Value,
}

const EXTRA_SQL: &str = "
CREATE TABLE hits (page TEXT PRIMARY KEY, views BIGINT NOT NULL DEFAULT 0);
CREATE TABLE seats (event TEXT PRIMARY KEY, seat_limit BIGINT NOT NULL,
    taken BIGINT NOT NULL DEFAULT 0, held BIGINT NOT NULL DEFAULT 0,
    CHECK (taken + held <= seat_limit));
CREATE TABLE seat_holds (hold_id BIGSERIAL PRIMARY KEY, event TEXT NOT NULL REFERENCES seats,
    seats BIGINT NOT NULL, until TIMESTAMP NOT NULL);
INSERT INTO seats (event, seat_limit) VALUES ('gig', 10);
CREATE TABLE tasks (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INT NOT NULL DEFAULT 0,
    locked_until TIMESTAMPTZ, holder TEXT, last_error TEXT);
INSERT INTO tasks (name) SELECT 'task-' || g FROM generate_series(1, 40) g;";

const THREADS: usize = 8;

fn db() -> TestDb {
    let db = fixture::pg();
    db.conn().batch_execute(EXTRA_SQL).unwrap();
    db
}

fn at(hour: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
}

fn row(kind: &str, n: i64) -> Stats {
    Stats {
        stats_type: kind.to_owned(),
        data: json!({ "n": n }),
        created_at: at(1),
        updated_at: at(1),
    }
}

#[test]
fn the_pooler_url_parameter_turns_pooler_mode_on_and_is_not_given_to_libpq() {
    let db = db();
    let mut on = connect_pg(&db.pooled_url()).unwrap();
    assert!(is_pooler_mode(&mut on));
    let mut off = connect_pg(&db.through_pooler()).unwrap();
    assert!(!is_pooler_mode(&mut off));
    let pool = pg_pool(&db.pooled_url(), 2).unwrap();
    assert!(is_pooler_mode(&mut pool.get().unwrap()));
    assert!(matches!(
        connect_pg(&format!("{}?upsert_kit_pooler=yes", db.through_pooler())),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn upserts_bulk_and_get_or_create_pass_through_the_pooler_in_pooler_mode() {
    let db = db();
    let pool = pg_pool(&db.pooled_url(), THREADS as u32).unwrap();
    // Every thread upserts the same new key many times, then bulk-upserts shared keys.
    let outcomes = race(THREADS, {
        let pool = pool.clone();
        move |i| {
            let mut conn = pool.get().unwrap();
            let mut inserted = 0;
            for n in 0..20 {
                if atomic_upsert(&mut conn, &row("shared", (i * 100 + n) as i64)).unwrap()
                    == UpsertOutcome::Inserted
                {
                    inserted += 1;
                }
            }
            let rows: Vec<Stats> = (0..10)
                .map(|k| row(&format!("bulk-{k}"), i as i64))
                .collect();
            let bulk = bulk_upsert(&mut conn, &rows).unwrap();
            assert_eq!(bulk.rows(), 10);
            let obtained: upsert_kit::get_or_create::Obtained<StoredStats> = get_or_create(
                &mut conn,
                &NewStats {
                    stats_type: "goc".into(),
                    data: json!({ "by": i }),
                },
            )
            .unwrap();
            assert_eq!(obtained.row.stats_type, "goc");
            assert!(obtained.row.id > 0 && obtained.row.data["by"].is_number());
            (inserted, bulk.inserted, obtained.created)
        }
    });
    assert_eq!(outcomes.iter().map(|o| o.0).sum::<usize>(), 1);
    assert_eq!(outcomes.iter().map(|o| o.1).sum::<usize>(), 10);
    assert_eq!(outcomes.iter().filter(|o| o.2).count(), 1);
    let mut conn = db.conn();
    assert_eq!(
        stats::table.count().get_result::<i64>(&mut conn).unwrap(),
        12
    );
}

/// The coalescing writer through the pooler: its batches are transactions, so a transaction-
/// mode pooler carries them; merged upserts and increments stay exact.
#[test]
fn the_coalescing_writer_is_exact_through_the_pooler_in_pooler_mode() {
    let db = db();
    let writer = upsert_kit::coalesce::Coalescer::new(pg_pool(&db.pooled_url(), 4).unwrap());
    let w = writer.clone();
    let told = race(THREADS, move |t| {
        (0..25)
            .map(|i| {
                let outcome = w
                    .upsert(row(&format!("c{}", (t + i) % 5), i as i64))
                    .unwrap();
                let views = w
                    .upsert_increment::<Hits>("coalesced".to_owned(), [1])
                    .unwrap()[0];
                (outcome, views)
            })
            .collect::<Vec<_>>()
    });
    let told: Vec<_> = told.into_iter().flatten().collect();
    let inserted = told
        .iter()
        .filter(|(o, _)| *o == UpsertOutcome::Inserted)
        .count();
    assert_eq!(inserted, 5, "one insert per key");
    let mut views: Vec<i64> = told.iter().map(|(_, v)| *v).collect();
    views.sort_unstable();
    assert_eq!(views, (1..=(THREADS * 25) as i64).collect::<Vec<_>>());
    let mut conn = db.conn();
    let stored: i64 = hits::table
        .filter(hits::page.eq("coalesced"))
        .select(hits::views)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(stored, (THREADS * 25) as i64);
}

#[test]
fn counters_and_quotas_are_exact_through_the_pooler_in_pooler_mode() {
    let db = db();
    let url = db.pooled_url();
    let spent = race(THREADS, move |_| {
        let mut conn = connect_pg(&url).unwrap();
        for _ in 0..25 {
            upsert_increment::<Hits, _>(&mut conn, &"home".to_owned(), [1]).unwrap();
        }
        let mut spent = 0;
        for _ in 0..5 {
            match try_consume::<Seats, _>(&mut conn, &"gig".to_owned(), 1, at(2)) {
                Ok(_) => spent += 1,
                Err(Error::QuotaExceeded { .. }) => {}
                // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        spent
    });
    let mut conn = db.conn();
    let views: i64 = hits::table
        .select(hits::views)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(views, (THREADS * 25) as i64);
    assert_eq!(spent.iter().sum::<i64>(), 10);
    let taken: i64 = seats::table
        .select(seats::taken)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(taken, 10);
}

#[test]
fn transaction_locks_claims_and_retry_hold_through_the_pooler_in_pooler_mode() {
    let db = db();
    let url = db.pooled_url();
    let results = race(THREADS, move |i| {
        let mut conn = connect_pg(&url).unwrap();
        // A read-modify-write under the transaction-scoped lock: no increment is lost.
        for _ in 0..10 {
            Retry::new()
                .run(|_| {
                    tx_increment(&mut conn)?;
                    Ok(())
                })
                .unwrap();
        }
        let queue = Queue::<Task>::new(format!("worker-{i}")).unwrap();
        let mut done = 0;
        loop {
            let claims = queue.claim(&mut conn, 3).unwrap();
            if claims.is_empty() {
                break;
            }
            for claim in &claims {
                queue.complete(&mut conn, claim).unwrap();
                done += 1;
            }
        }
        done
    });
    assert_eq!(results.iter().sum::<usize>(), 40);
    let mut conn = db.conn();
    let views: i64 = hits::table
        .filter(hits::page.eq("locked"))
        .select(hits::views)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(views, (THREADS * 10) as i64);
    let done: i64 = tasks::table
        .filter(tasks::status.eq("done"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(done, 40);
}

/// Reads the `locked` counter and writes it back plus one, under `xact_lock`.
fn tx_increment(conn: &mut PgConnection) -> upsert_kit::Result<()> {
    conn.transaction(|conn| {
        xact_lock(conn, LockKey::new("pooler-test", 1))?;
        let current: Option<i64> = hits::table
            .filter(hits::page.eq("locked"))
            .select(hits::views)
            .get_result(conn)
            .optional()?;
        diesel::insert_into(hits::table)
            .values((
                hits::page.eq("locked"),
                hits::views.eq(current.unwrap_or(0) + 1),
            ))
            .on_conflict(hits::page)
            .do_update()
            .set(hits::views.eq(current.unwrap_or(0) + 1))
            .execute(conn)?;
        Ok(())
    })
}

#[test]
fn session_locks_are_refused_in_pooler_mode_naming_the_alternative() {
    let db = db();
    let mut conn = connect_pg(&db.pooled_url()).unwrap();
    let key = LockKey::new("pooler-test", 2);
    let refused = |r: Result<(), Error>, what: &str| match r {
        Err(e @ Error::SessionStateUnavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains(what), "{message}");
            assert!(message.contains("xact_lock"), "{message}");
            assert!(message.contains("claim"), "{message}");
            assert!(!e.is_retryable());
        }
        other => panic!("{what}: expected SessionStateUnavailable, got {other:?}"),
    };
    refused(lock::lock(&mut conn, key).map(drop), "lock::lock");
    refused(
        lock::lock_shared(&mut conn, key).map(drop),
        "lock::lock_shared",
    );
    refused(lock::try_lock(&mut conn, key).map(drop), "lock::try_lock");
    refused(
        lock::try_lock_shared(&mut conn, key).map(drop),
        "lock::try_lock_shared",
    );
    refused(
        lock::try_lock_for(&mut conn, key, std::time::Duration::from_secs(1)).map(drop),
        "lock::try_lock_for",
    );
    refused(
        lock::with_lock(&mut conn, key, |_| Ok::<_, Error>(())),
        "lock::with_lock",
    );
    // Nothing was taken, and the transaction-scoped lock works on the same connection.
    let mut direct = db.conn();
    assert!(lock::server_locks(&mut direct).unwrap().is_empty());
    assert!(conn.transaction(|c| try_xact_lock(c, key)).unwrap());
}

/// A PgBouncer of one server connection, so that two clients deterministically share it.
fn single_server_bouncer() -> PgBouncer {
    PgBouncer::start(&admin_url(), 1).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn without_pooler_mode_named_prepared_statements_fail_behind_the_pooler() {
    let db = db();
    let bouncer = single_server_bouncer();
    let url = bouncer.url_of(db.name());
    let mut a = connect_pg(&url).unwrap();
    let mut b = connect_pg(&url).unwrap();
    // A prepares `__diesel_stmt_<n>` on the one server connection; B, a new client whose
    // counter starts where A's did, prepares the same name there.
    atomic_upsert(&mut a, &row("a", 1)).unwrap();
    let e = atomic_upsert(&mut b, &row("b", 1)).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("prepared statement \"__diesel_stmt_")
            && message.contains("already exists"),
        "{message}"
    );
    // With pooler mode on, the same two clients through the same server connection pass.
    let pooled = format!("{url}?{}", upsert_kit::db::POOLER_PARAM);
    let mut a = connect_pg(&pooled).unwrap();
    let mut b = connect_pg(&pooled).unwrap();
    for n in 0..5 {
        atomic_upsert(&mut a, &row("a", n)).unwrap();
        atomic_upsert(&mut b, &row("b", n)).unwrap();
    }
}

#[test]
fn without_pooler_mode_a_session_lock_is_held_by_the_wrong_client() {
    let db = db();
    let bouncer = single_server_bouncer();
    let url = bouncer.url_of(db.name());
    let key = LockKey::new("pooler-test", 3);
    // Unnamed statements (as in pooler mode), so that only the session state is at fault,
    // but without pooler mode's refusal.
    let mut a = connect_pg(&url).unwrap();
    let mut b = connect_pg(&url).unwrap();
    for c in [&mut a, &mut b] {
        c.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
    }
    let guard = lock::try_lock(&mut a, key)
        .unwrap()
        .expect("A takes the lock");
    // B, another client, "takes" the lock A holds: the pooler gave it A's server session,
    // where session locks stack.
    let stolen = lock::try_lock(&mut b, key).unwrap();
    assert!(stolen.is_some(), "B got the lock A holds");
    drop(stolen);
    drop(guard);
}

#[test]
fn without_pooler_mode_a_prepared_statement_is_missing_on_the_next_server_connection() {
    let db = db();
    let bouncer = PgBouncer::start(&admin_url(), 2).unwrap_or_else(|e| panic!("{e}"));
    let url = bouncer.url_of(db.name());
    let mut a = connect_pg(&url).unwrap();
    let mut b = connect_pg(&url).unwrap();
    // A prepares the upsert on the server connection it gets (PgBouncer reuses the most
    // recently used idle one).
    atomic_upsert(&mut a, &row("a", 1)).unwrap();
    // B holds that server connection inside a transaction, so A's next transaction runs on
    // the other one, where the statement was never prepared.
    b.batch_execute("BEGIN; SELECT 1").unwrap();
    let e = atomic_upsert(&mut a, &row("a", 2)).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("prepared statement \"__diesel_stmt_")
            && message.contains("does not exist"),
        "{message}"
    );
    b.batch_execute("ROLLBACK").unwrap();
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

fn show(conn: &mut PgConnection, name: &str) -> String {
    diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
        .get_result::<Setting>(conn)
        .unwrap()
        .value
}

/// What the crate and Diesel send that is session-scoped: Diesel's connection setup runs
/// `SET TIME ZONE 'UTC'` and `SET CLIENT_ENCODING TO 'UTF8'`, parameters PgBouncer tracks (it
/// restores each client's values on whatever server connection it gets); the crate's own only
/// setting is `set_config('lock_timeout', …, true)`, transaction-local. An untracked `SET`
/// without `LOCAL`, by contrast, leaks to the next client of the server connection, which is why
/// the crate never sends one.
#[test]
fn behind_the_pooler_only_tracked_or_local_settings_are_safe_and_the_crate_sends_no_other() {
    let db = db();
    let bouncer = single_server_bouncer();
    let pooled = format!(
        "{}?{}",
        bouncer.url_of(db.name()),
        upsert_kit::db::POOLER_PARAM
    );
    let mut a = connect_pg(&pooled).unwrap();
    let mut b = connect_pg(&pooled).unwrap();

    // B changes a tracked parameter for its session: A still sees its own (Diesel's) value.
    b.batch_execute("SET TIME ZONE 'America/New_York'").unwrap();
    assert_eq!(show(&mut a, "TimeZone"), "UTC");
    assert_eq!(show(&mut b, "TimeZone"), "America/New_York");
    assert_eq!(show(&mut a, "client_encoding"), "UTF8");

    // An untracked session SET by B is seen by A: the one server connection carries it.
    b.batch_execute("SET lock_timeout = '1234ms'").unwrap();
    assert_eq!(
        show(&mut a, "lock_timeout"),
        "1234ms",
        "the naive session SET leaks"
    );
    b.batch_execute("RESET lock_timeout").unwrap();

    // The crate's own setting is transaction-local: nothing is left for the next client. (The
    // capture keeps statements unnamed and puts pooler mode back afterwards.)
    let (_, statements) = upsert_kit_support::citus::capture(&mut a, |a| {
        upsert_kit::transaction(a, |a| {
            lock::xact_lock(a, LockKey::new("pooler-set", 1))?;
            atomic_upsert(a, &row("s", 1))?;
            counter_hit(a)
        })
        .unwrap();
    });
    assert_eq!(show(&mut b, "lock_timeout"), "0");
    let session_sets: Vec<&String> = statements
        .iter()
        .filter(|s| {
            let s = s.to_ascii_uppercase();
            (s.trim_start().starts_with("SET ") && !s.trim_start().starts_with("SET LOCAL"))
                || (s.contains("SET_CONFIG(") && !s.contains("TRUE"))
        })
        .collect();
    assert!(session_sets.is_empty(), "{session_sets:#?}");
    assert!(is_pooler_mode(&mut a));
}

fn counter_hit(conn: &mut PgConnection) -> upsert_kit::Result<()> {
    upsert_increment::<Hits, _>(conn, &"p".to_owned(), [1])?;
    Ok(())
}

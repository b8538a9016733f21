//! Quotas found by a natural key whose reservations name the quota row by its id, two quotas
//! of one row sharing one reservation table (told apart by a tag column), and rows returned as
//! the caller's own structs, on PostgreSQL, SQLite and MySQL/MariaDB: each test written once in
//! [`linked_guarantees!`] and run in a module per backend. The period table carries `CHECK
//! (used + held <= limit)` for both quotas, so a statement that pushed one past its limit would
//! fail at once.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use std::time::Duration;
use upsert_kit::quota::{
    commit_returning, expire, release, reserve, reserve_returning, try_consume,
    try_consume_returning, usage, QuotaUsage,
};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    periods (id) {
        id -> BigInt,
        account -> BigInt,
        starts_at -> Timestamp,
        credit_limit -> BigInt,
        credits_used -> BigInt,
        credits_held -> BigInt,
        call_limit -> BigInt,
        calls_used -> BigInt,
        calls_held -> BigInt,
    }
}

diesel::table! {
    holds (hold_id) {
        hold_id -> BigInt,
        account -> BigInt,
        period_id -> BigInt,
        kind -> Text,
        amount -> BigInt,
        until -> Timestamp,
    }
}

upsert_kit::quota! {
    table = periods, key = (account: i64, starts_at: NaiveDateTime),
    limit = credit_limit, used = credits_used, reserved = credits_held;
    reservations = holds(hold_id, amount, until), link = (account = account, period_id = id),
        tag = (kind = "credits");
    pub struct Credits;
}

upsert_kit::quota! {
    table = periods, key = (account: i64, starts_at: NaiveDateTime),
    limit = call_limit, used = calls_used, reserved = calls_held;
    reservations = holds(hold_id, amount, until), link = (account = account, period_id = id),
        tag = (kind = "calls");
    pub struct Calls;
}

/// The period row, as the calls return it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = periods)]
struct Period {
    id: i64,
    starts_at: NaiveDateTime,
    credits_used: i64,
    credits_held: i64,
    calls_used: i64,
    calls_held: i64,
}

/// A reservation's row, as `reserve_returning` returns it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = holds)]
struct Hold {
    account: i64,
    period_id: i64,
    kind: String,
    amount: i64,
}

const PG_SQL: &str = "
CREATE TABLE periods (id BIGSERIAL PRIMARY KEY, account BIGINT NOT NULL, starts_at TIMESTAMP NOT NULL,
    credit_limit BIGINT NOT NULL, credits_used BIGINT NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    credits_held BIGINT NOT NULL DEFAULT 0 CHECK (credits_held >= 0),
    call_limit BIGINT NOT NULL, calls_used BIGINT NOT NULL DEFAULT 0 CHECK (calls_used >= 0),
    calls_held BIGINT NOT NULL DEFAULT 0 CHECK (calls_held >= 0),
    UNIQUE (account, starts_at),
    CHECK (credits_used + credits_held <= credit_limit), CHECK (calls_used + calls_held <= call_limit));
CREATE TABLE holds (hold_id BIGSERIAL PRIMARY KEY, account BIGINT NOT NULL,
    period_id BIGINT NOT NULL REFERENCES periods (id), kind TEXT NOT NULL, amount BIGINT NOT NULL,
    until TIMESTAMP NOT NULL);
INSERT INTO periods (account, starts_at, credit_limit, call_limit) VALUES
    (7, '2026-12-01 00:00:00', 100, 10), (7, '2027-01-01 00:00:00', 100, 10),
    (8, '2026-12-01 00:00:00', 100, 10);";

const SQLITE_SQL: &str = "
CREATE TABLE periods (id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
    starts_at TIMESTAMP NOT NULL,
    credit_limit BIGINT NOT NULL, credits_used BIGINT NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    credits_held BIGINT NOT NULL DEFAULT 0 CHECK (credits_held >= 0),
    call_limit BIGINT NOT NULL, calls_used BIGINT NOT NULL DEFAULT 0 CHECK (calls_used >= 0),
    calls_held BIGINT NOT NULL DEFAULT 0 CHECK (calls_held >= 0),
    UNIQUE (account, starts_at),
    CHECK (credits_used + credits_held <= credit_limit), CHECK (calls_used + calls_held <= call_limit));
CREATE TABLE holds (hold_id INTEGER PRIMARY KEY AUTOINCREMENT, account BIGINT NOT NULL,
    period_id BIGINT NOT NULL REFERENCES periods (id), kind TEXT NOT NULL, amount BIGINT NOT NULL,
    until TIMESTAMP NOT NULL);
INSERT INTO periods (account, starts_at, credit_limit, call_limit) VALUES
    (7, '2026-12-01 00:00:00', 100, 10), (7, '2027-01-01 00:00:00', 100, 10),
    (8, '2026-12-01 00:00:00', 100, 10);";

const MYSQL_SQL: &str = "
CREATE TABLE periods (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, account BIGINT NOT NULL,
    starts_at DATETIME(6) NOT NULL,
    credit_limit BIGINT NOT NULL, credits_used BIGINT NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    credits_held BIGINT NOT NULL DEFAULT 0 CHECK (credits_held >= 0),
    call_limit BIGINT NOT NULL, calls_used BIGINT NOT NULL DEFAULT 0 CHECK (calls_used >= 0),
    calls_held BIGINT NOT NULL DEFAULT 0 CHECK (calls_held >= 0),
    UNIQUE (account, starts_at),
    CHECK (credits_used + credits_held <= credit_limit), CHECK (calls_used + calls_held <= call_limit));
CREATE TABLE holds (hold_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, account BIGINT NOT NULL,
    period_id BIGINT NOT NULL, kind VARCHAR(16) NOT NULL, amount BIGINT NOT NULL,
    until DATETIME(6) NOT NULL, FOREIGN KEY (period_id) REFERENCES periods (id));
INSERT INTO periods (account, starts_at, credit_limit, call_limit) VALUES
    (7, '2026-12-01 00:00:00', 100, 10), (7, '2027-01-01 00:00:00', 100, 10),
    (8, '2026-12-01 00:00:00', 100, 10);";

const TTL: Duration = Duration::from_secs(60);

fn day(y: i32, m: u32) -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
}

/// Account 7's December period: the natural key the calls find it by.
fn december() -> (i64, NaiveDateTime) {
    (7, day(2026, 12))
}

fn january() -> (i64, NaiveDateTime) {
    (7, day(2027, 1))
}

fn now() -> NaiveDateTime {
    day(2026, 12) + chrono::Duration::hours(10)
}

/// A module `$backend` of the tests on the database `db` (its connection type `conn`).
macro_rules! linked_guarantees {
    ($backend:ident, db = $db:expr, conn = $conn:ty) => {
        mod $backend {
            use super::*;

            fn period(conn: &mut $conn, key: (i64, NaiveDateTime)) -> Period {
                periods::table
                    .filter(periods::account.eq(key.0))
                    .filter(periods::starts_at.eq(key.1))
                    .select(Period::as_select())
                    .first(conn)
                    .unwrap()
            }

            fn holds_of(conn: &mut $conn, kind: &str) -> i64 {
                holds::table
                    .filter(holds::kind.eq(kind))
                    .count()
                    .get_result(conn)
                    .unwrap()
            }

            #[test]
            fn calls_find_the_row_by_its_natural_key_and_return_it_as_the_callers_struct() {
                let db = $db;
                let mut conn = db.conn();
                let december_id = period(&mut conn, december()).id;
                let after: Period =
                    try_consume_returning::<Credits, _, _>(&mut conn, &december(), 30, now())
                        .unwrap();
                assert_eq!(
                    after,
                    Period {
                        id: december_id,
                        starts_at: day(2026, 12),
                        credits_used: 30,
                        credits_held: 0,
                        calls_used: 0,
                        calls_held: 0
                    }
                );

                let (held, hold): (_, Hold) =
                    reserve_returning::<Credits, _, _>(&mut conn, &december(), 20, TTL, now())
                        .unwrap();
                assert_eq!(
                    hold,
                    Hold {
                        account: 7,
                        period_id: december_id,
                        kind: "credits".into(),
                        amount: 20
                    },
                    "the link columns took the quota row's values, the tag its value"
                );
                assert_eq!((held.key, held.amount), (december(), 20));
                let after: Period =
                    commit_returning::<Credits, _, _>(&mut conn, &held, 15, now()).unwrap();
                assert_eq!((after.credits_used, after.credits_held), (45, 0));
                assert!(matches!(
                    commit_returning::<Credits, Period, _>(&mut conn, &held, 15, now()),
                    Err(Error::NotFound(_))
                ));
                // The other quota of the row, and the other rows, are untouched.
                assert_eq!((after.calls_used, after.calls_held), (0, 0));
                let january = period(&mut conn, january());
                assert_eq!((january.credits_used, january.credits_held), (0, 0));
                assert!(matches!(
                    try_consume_returning::<Credits, Period, _>(
                        &mut conn,
                        &(9, day(2026, 12)),
                        1,
                        now()
                    ),
                    Err(Error::NotFound(_))
                ));
            }

            /// Two quotas of one row keep their reservations in one table: each commit,
            /// release and sweep takes only its own quota's rows (by tag) of its own quota row
            /// (by link), so the sums of both stay right.
            #[test]
            fn two_quotas_sharing_a_reservation_table_each_settle_and_sweep_only_their_own() {
                let db = $db;
                let mut conn = db.conn();
                let short = Duration::from_secs(10);
                let c1 = reserve::<Credits, _>(&mut conn, &december(), 60, short, now()).unwrap();
                let k1 = reserve::<Calls, _>(&mut conn, &december(), 4, short, now()).unwrap();
                let j1 = reserve::<Credits, _>(&mut conn, &january(), 50, short, now()).unwrap();
                let k2 = reserve::<Calls, _>(&mut conn, &december(), 6, TTL, now()).unwrap();
                assert_eq!(holds_of(&mut conn, "credits"), 2);
                assert_eq!(holds_of(&mut conn, "calls"), 2);
                // A calls id is no credits reservation: committing it as one finds nothing.
                let forged = upsert_kit::quota::Reservation::<Credits> {
                    id: k2.id,
                    key: december(),
                    amount: 6,
                    expires_at: k2.expires_at,
                };
                assert!(!release(&mut conn, &forged).unwrap());
                assert_eq!(
                    usage::<Calls, _>(&mut conn, &december()).unwrap().unwrap(),
                    QuotaUsage {
                        limit: 10,
                        used: 0,
                        reserved: 10
                    }
                );

                // December's calls are full; at 10 s their short reservation expires, and a
                // refused consumption sweeps December's calls only.
                let later = now() + chrono::Duration::seconds(10);
                assert!(matches!(
                    try_consume::<Calls, _>(&mut conn, &december(), 1, now()),
                    Err(Error::QuotaExceeded {
                        requested: 1,
                        available: 0
                    })
                ));
                let u = try_consume::<Calls, _>(&mut conn, &december(), 4, later).unwrap();
                assert_eq!(
                    u,
                    QuotaUsage {
                        limit: 10,
                        used: 4,
                        reserved: 6
                    }
                );
                assert_eq!(holds_of(&mut conn, "calls"), 1, "k1 was swept, k2 kept");
                assert!(!release(&mut conn, &k1).unwrap(), "k1 was swept");
                assert_eq!(
                    holds_of(&mut conn, "credits"),
                    2,
                    "no credits reservation was swept"
                );
                let d = period(&mut conn, december());
                assert_eq!((d.credits_used, d.credits_held), (0, 60));

                // A refused credits reservation in December sweeps December's credits, not
                // January's (same account, same tag, another row).
                let c2 = reserve::<Credits, _>(&mut conn, &december(), 100, TTL, later).unwrap();
                assert_eq!(
                    holds_of(&mut conn, "credits"),
                    2,
                    "c1 swept, c2 made, j1 kept"
                );
                let j = period(&mut conn, january());
                assert_eq!((j.credits_used, j.credits_held), (0, 50));
                assert!(!release(&mut conn, &c1).unwrap(), "c1 was swept");

                // The periodic sweep of every key: January's credits at 10 s; December's calls
                // at 60 s, its credits (c2, reserved at 10 s) at 70 s.
                assert_eq!(expire::<Calls, _>(&mut conn, later).unwrap(), 0);
                assert_eq!(expire::<Credits, _>(&mut conn, later).unwrap(), 1);
                assert!(!release(&mut conn, &j1).unwrap());
                let end = now() + chrono::Duration::seconds(70);
                assert_eq!(expire::<Credits, _>(&mut conn, end).unwrap(), 1);
                assert_eq!(expire::<Calls, _>(&mut conn, end).unwrap(), 1);
                assert!(!release(&mut conn, &c2).unwrap());
                assert!(!release(&mut conn, &k2).unwrap());
                for key in [december(), january()] {
                    let p = period(&mut conn, key);
                    assert_eq!((p.credits_held, p.calls_held), (0, 0), "{key:?}");
                }
                let d = period(&mut conn, december());
                assert_eq!((d.credits_used, d.calls_used), (0, 4));
                assert_eq!(
                    holds_of(&mut conn, "credits") + holds_of(&mut conn, "calls"),
                    0
                );
            }

            /// 16 threads released by a barrier: half hold 5 calls and give them back at once,
            /// half consume one call at a time. A refusal read while units were held and then
            /// released finds room after all and is tried again: every refusal reports less
            /// room than it asked for, and consumption (the race's, then one caller's until
            /// refused) ends exactly at the limit.
            #[test]
            fn a_refusal_always_reports_less_room_than_asked_while_reservations_come_and_go() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let results = race(16, move |i| {
                    let mut conn = p.get().unwrap();
                    let (mut consumed, mut wrong) = (0, Vec::new());
                    for _ in 0..40 {
                        let (requested, result) = if i % 2 == 0 {
                            let held = reserve::<Calls, _>(&mut conn, &december(), 5, TTL, now());
                            if let Ok(r) = &held {
                                assert!(release(&mut conn, r).unwrap());
                            }
                            (5, held.map(|_| ()))
                        } else {
                            let used = try_consume::<Calls, _>(&mut conn, &december(), 1, now());
                            consumed += i64::from(used.is_ok());
                            (1, used.map(|_| ()))
                        };
                        match result {
                            Ok(()) | Err(Error::SerializationFailure(_)) => {}
                            Err(Error::QuotaExceeded { available, .. })
                                if available < requested => {}
                            Err(e) => wrong.push(format!("{e:?}")),
                        }
                    }
                    (consumed, wrong)
                });
                let consumed: i64 = results.iter().map(|r| r.0).sum();
                let wrong: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
                assert!(wrong.is_empty(), "{wrong:?}");
                // How much of the limit the race used depends on how long the holds kept it
                // full (a loaded machine: most of it); what is left is consumed alone, and the
                // sum is exactly the limit.
                let mut conn = db.conn();
                let mut after = 0;
                let refusal = loop {
                    match try_consume::<Calls, _>(&mut conn, &december(), 1, now()) {
                        Ok(_) => after += 1,
                        Err(e) => break e,
                    }
                };
                assert!(
                    matches!(refusal, Error::QuotaExceeded { available: 0, .. }),
                    "{refusal:?}"
                );
                assert_eq!(consumed + after, 10);
                let d = period(&mut conn, december());
                assert_eq!((d.calls_used, d.calls_held), (10, 0));
            }

            /// 16 threads released by a barrier reserve and commit credits and calls of one
            /// row, and consume both: each quota ends exactly at its limit, and every
            /// reservation made was settled once.
            #[test]
            fn sixteen_threads_on_two_quotas_of_one_row_fill_both_exactly() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let won = race(16, move |i| {
                    let mut conn = p.get().unwrap();
                    let (mut credits, mut calls) = (0, 0);
                    for _ in 0..10 {
                        if i % 2 == 0 {
                            match reserve::<Credits, _>(&mut conn, &december(), 2, TTL, now()) {
                                Ok(r) => {
                                    let after: Period =
                                        commit_returning::<Credits, _, _>(&mut conn, &r, 2, now())
                                            .unwrap();
                                    assert!(after.credits_used + after.credits_held <= 100);
                                    credits += 1;
                                }
                                Err(Error::QuotaExceeded { .. }) => {}
                                // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                                Err(e @ Error::SerializationFailure(_)) => {
                                    assert!(e.is_retryable())
                                }
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        } else {
                            match try_consume_returning::<Calls, Period, _>(
                                &mut conn,
                                &december(),
                                1,
                                now(),
                            ) {
                                Ok(after) => {
                                    assert!(after.calls_used <= 10);
                                    calls += 1;
                                }
                                Err(Error::QuotaExceeded { .. }) => {}
                                // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                                Err(e @ Error::SerializationFailure(_)) => {
                                    assert!(e.is_retryable())
                                }
                                Err(e) => panic!("unexpected {e:?}"),
                            }
                        }
                    }
                    (credits, calls)
                });
                let credits: i64 = won.iter().map(|w| w.0).sum();
                let calls: i64 = won.iter().map(|w| w.1).sum();
                assert_eq!((credits, calls), (50, 10));
                let mut conn = db.conn();
                let d = period(&mut conn, december());
                assert_eq!(
                    (d.credits_used, d.credits_held, d.calls_used, d.calls_held),
                    (100, 0, 10, 0)
                );
                assert_eq!(holds_of(&mut conn, "credits"), 0);
            }
        }
    };
}

linked_guarantees!(postgres, db = TestDb::with_sql(PG_SQL), conn = PgConnection);
linked_guarantees!(
    sqlite,
    db = TestSqlite::with_sql(SQLITE_SQL),
    conn = SqliteConnection
);
linked_guarantees!(
    mysql,
    db = TestMysql::with_sql(MYSQL_SQL),
    conn = MysqlConnection
);

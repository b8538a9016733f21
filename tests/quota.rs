//! Generic quotas on tables these tests declare themselves, on PostgreSQL, SQLite and
//! MySQL/MariaDB (its default REPEATABLE READ)
//! (RELIABILITY case 10), each test written once in [`quota_guarantees!`] and run in a module
//! per backend: `postgres::…`, `sqlite::…`, `mysql::…`. The quota table carries `CHECK (used + reserved <= seat_limit +
//! margin)`: a single statement that pushed a quota past its limit would fail the test at once,
//! so "always" is checked by the server at every write, not only at the end.

use diesel::prelude::*;
use std::time::Duration;
use upsert_kit::quota::{
    commit, expire, release, reserve, try_consume, try_consume_soft, usage, QuotaUsage,
};
use upsert_kit::Error;
use upsert_kit_support::{race, TestDb, TestMysql, TestSqlite};

diesel::table! {
    seats (event) {
        event -> Text,
        seat_limit -> BigInt,
        taken -> BigInt,
        held -> BigInt,
        margin -> BigInt,
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

const PG_SQL: &str = "
CREATE TABLE seats (event TEXT PRIMARY KEY, seat_limit BIGINT NOT NULL,
    taken BIGINT NOT NULL DEFAULT 0 CHECK (taken >= 0), held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    margin BIGINT NOT NULL DEFAULT 0,
    CHECK (taken + held <= seat_limit + margin));
CREATE TABLE seat_holds (hold_id BIGSERIAL PRIMARY KEY, event TEXT NOT NULL REFERENCES seats,
    seats BIGINT NOT NULL, until TIMESTAMP NOT NULL);
INSERT INTO seats (event, seat_limit) VALUES ('gig', 100);
INSERT INTO seats (event, seat_limit, margin) VALUES ('soft', 100, 5);
INSERT INTO seats (event, seat_limit, margin) VALUES ('naive', 100, 1000000);";

/// `AUTOINCREMENT` on the reservation id: a plain `INTEGER PRIMARY KEY` gives a new row the id
/// of the last one once that is deleted, and a stale reservation (committed or released) would
/// then commit or release another caller's: `reserve_commit_release_…` fails so without it.
const SQLITE_SQL: &str = "
CREATE TABLE seats (event TEXT PRIMARY KEY NOT NULL, seat_limit BIGINT NOT NULL,
    taken BIGINT NOT NULL DEFAULT 0 CHECK (taken >= 0), held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    margin BIGINT NOT NULL DEFAULT 0,
    CHECK (taken + held <= seat_limit + margin));
CREATE TABLE seat_holds (hold_id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL REFERENCES seats,
    seats BIGINT NOT NULL, until TIMESTAMP NOT NULL);
INSERT INTO seats (event, seat_limit) VALUES ('gig', 100);
INSERT INTO seats (event, seat_limit, margin) VALUES ('soft', 100, 5);
INSERT INTO seats (event, seat_limit, margin) VALUES ('naive', 100, 1000000);";

const MYSQL_SQL: &str = "
CREATE TABLE seats (event VARCHAR(255) PRIMARY KEY, seat_limit BIGINT NOT NULL,
    taken BIGINT NOT NULL DEFAULT 0 CHECK (taken >= 0), held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    margin BIGINT NOT NULL DEFAULT 0,
    CHECK (taken + held <= seat_limit + margin));
CREATE TABLE seat_holds (hold_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event VARCHAR(255) NOT NULL, seats BIGINT NOT NULL, until DATETIME(6) NOT NULL,
    FOREIGN KEY (event) REFERENCES seats (event));
INSERT INTO seats (event, seat_limit) VALUES ('gig', 100);
INSERT INTO seats (event, seat_limit, margin) VALUES ('soft', 100, 5);
INSERT INTO seats (event, seat_limit, margin) VALUES ('naive', 100, 1000000);";

const TTL: Duration = Duration::from_secs(60);

fn now() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap()
}

fn gig() -> String {
    "gig".to_owned()
}

/// A module `$backend` of the quota tests on the database `db` (its connection type `conn`). A
/// macro because the calls' bounds differ per backend.
macro_rules! quota_guarantees {
    ($backend:ident, db = $db:expr, conn = $conn:ty) => {
        mod $backend {
            use super::*;

            fn holds(conn: &mut $conn) -> i64 {
                seat_holds::table.count().get_result(conn).unwrap()
            }

            #[test]
            fn sixteen_threads_reserving_past_the_limit_fill_it_exactly_and_never_cross_it() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let won = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let mut won = 0;
                    for _ in 0..10 {
                        match reserve::<Seats, _>(&mut conn, &gig(), 1, TTL, now()) {
                            Ok(_) => won += 1,
                            Err(Error::QuotaExceeded {
                                requested: 1,
                                available: 0,
                            }) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    won
                });
                assert_eq!(won.iter().sum::<i64>(), 100);
                let mut conn = db.conn();
                let u = usage::<Seats, _>(&mut conn, &gig()).unwrap().unwrap();
                assert_eq!(
                    u,
                    QuotaUsage {
                        limit: 100,
                        used: 0,
                        reserved: 100
                    }
                );
                assert_eq!(holds(&mut conn), 100, "one reservation row per unit held");
            }

            /// The naive check-then-act (read `taken`, then write `taken + 1` if it was under
            /// the limit) overspends on the barrier's schedule.
            #[test]
            fn the_naive_check_then_act_overspends_when_16_threads_read_before_they_write() {
                let db = $db;
                let pool = db.pool(16);
                let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
                let (p, b) = (pool.clone(), barrier.clone());
                race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    for _ in 0..10 {
                        let (limit, taken): (i64, i64) = seats::table
                            .find("naive")
                            .select((seats::seat_limit, seats::taken))
                            .get_result(&mut conn)
                            .unwrap();
                        b.wait();
                        if taken < limit {
                            diesel::update(seats::table.find("naive"))
                                .set(seats::taken.eq(seats::taken + 1))
                                .execute(&mut conn)
                                .unwrap();
                        }
                        b.wait();
                    }
                });
                let mut conn = db.conn();
                let naive = usage::<Seats, _>(&mut conn, &"naive".to_owned())
                    .unwrap()
                    .unwrap();
                // Each round all 16 see the same `taken`: 0, 16, …, 96 pass the check, so 7
                // rounds of 16.
                assert_eq!(naive.used, 112, "the naive code spent 112 of 100");
            }

            /// Reservations and consumptions from 16 threads fill the limit exactly and never
            /// cross it (the table's CHECK would fail any statement that did); expiry and
            /// commit keep the sums.
            #[test]
            fn sixteen_threads_reserving_and_consuming_fill_the_limit_and_expiry_frees_it() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let won = race(16, move |i| {
                    let mut conn = p.get().unwrap();
                    let mut won = 0;
                    for _ in 0..10 {
                        let ok = if i % 2 == 0 {
                            reserve::<Seats, _>(&mut conn, &gig(), 1, TTL, now()).map(|_| ())
                        } else {
                            try_consume::<Seats, _>(&mut conn, &gig(), 1, now()).map(|_| ())
                        };
                        match ok {
                            Ok(()) => won += 1,
                            Err(Error::QuotaExceeded {
                                requested: 1,
                                available: 0,
                            }) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    won
                });
                assert_eq!(won.iter().sum::<i64>(), 100);
                let mut conn = db.conn();
                let u = usage::<Seats, _>(&mut conn, &gig()).unwrap().unwrap();
                assert_eq!(u.used + u.reserved, 100);
                assert_eq!(holds(&mut conn), u.reserved, "one reservation row per unit held");
                let later = now() + chrono::Duration::seconds(61);
                assert_eq!(
                    expire::<Seats, _>(&mut conn, later).unwrap() as i64,
                    u.reserved
                );
                let after = usage::<Seats, _>(&mut conn, &gig()).unwrap().unwrap();
                assert_eq!((after.used, after.reserved), (u.used, 0));

                let r = reserve::<Seats, _>(&mut conn, &gig(), 7, TTL, later).unwrap();
                let c = commit(&mut conn, &r, 4, later).unwrap();
                assert_eq!((c.used, c.reserved), (u.used + 4, 0));
                assert!(matches!(
                    commit(&mut conn, &r, 4, later),
                    Err(Error::NotFound(_))
                ));
            }

            #[test]
            fn reserve_commit_release_and_consume_from_16_threads_keep_the_sums() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let counted = race(16, move |i| {
                    let mut conn = p.get().unwrap();
                    let mut counted = 0;
                    for round in 0..20 {
                        match reserve::<Seats, _>(&mut conn, &gig(), 3, TTL, now()) {
                            Ok(r) => {
                                if (i + round) % 3 == 0 {
                                    assert!(release(&mut conn, &r).unwrap());
                                    assert!(!release(&mut conn, &r).unwrap());
                                } else {
                                    let actual = ((i + round) % 4) as i64;
                                    let u = commit(&mut conn, &r, actual, now()).unwrap();
                                    assert!(u.used + u.reserved <= u.limit);
                                    assert!(matches!(
                                        commit(&mut conn, &r, actual, now()),
                                        Err(Error::NotFound(_))
                                    ));
                                    counted += actual;
                                }
                            }
                            Err(Error::QuotaExceeded { .. }) => {}
                            // A refusal whose read kept finding room (units given back in
                            // between), past its tries: retryable, nothing applied (the sums
                            // below would show it otherwise).
                            Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                        match try_consume::<Seats, _>(&mut conn, &gig(), 1, now()) {
                            Ok(u) => {
                                assert!(u.used + u.reserved <= u.limit);
                                counted += 1;
                            }
                            Err(Error::QuotaExceeded { .. }) => {}
                            Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    counted
                });
                let mut conn = db.conn();
                let u = usage::<Seats, _>(&mut conn, &gig()).unwrap().unwrap();
                assert_eq!(u.reserved, 0, "every reservation was committed or released");
                assert_eq!(
                    u.used,
                    counted.iter().sum::<i64>(),
                    "no unit lost or doubled"
                );
                assert!(u.used <= 100);
                assert_eq!(holds(&mut conn), 0);
            }

            #[test]
            fn expired_reservations_give_their_units_back() {
                let db = $db;
                let mut conn = db.conn();
                let all = reserve::<Seats, _>(&mut conn, &gig(), 100, TTL, now()).unwrap();
                assert!(matches!(
                    try_consume::<Seats, _>(&mut conn, &gig(), 1, now()),
                    Err(Error::QuotaExceeded {
                        requested: 1,
                        available: 0
                    })
                ));
                let later = now() + chrono::Duration::seconds(60);
                // The refused consumption sweeps its own key and succeeds.
                let u = try_consume::<Seats, _>(&mut conn, &gig(), 10, later).unwrap();
                assert_eq!((u.used, u.reserved), (10, 0));
                assert!(matches!(
                    commit(&mut conn, &all, 50, later),
                    Err(Error::NotFound(_))
                ));
                assert!(!release(&mut conn, &all).unwrap());
                // The periodic sweep of every key.
                let _a = reserve::<Seats, _>(&mut conn, &gig(), 20, TTL, later).unwrap();
                let _b = reserve::<Seats, _>(&mut conn, &"soft".to_owned(), 30, TTL, later).unwrap();
                let much_later = later + chrono::Duration::seconds(60);
                assert_eq!(expire::<Seats, _>(&mut conn, later).unwrap(), 0);
                assert_eq!(expire::<Seats, _>(&mut conn, much_later).unwrap(), 2);
                assert_eq!(expire::<Seats, _>(&mut conn, much_later).unwrap(), 0);
                for event in ["gig", "soft"] {
                    let u = usage::<Seats, _>(&mut conn, &event.to_owned())
                        .unwrap()
                        .unwrap();
                    assert_eq!(u.reserved, 0, "{event}");
                }
                assert_eq!(holds(&mut conn), 0);
            }

            /// A soft consumption refused for an expired reservation's units sweeps it and then
            /// overshoots by what it says.
            #[test]
            fn an_expired_reservation_makes_room_for_a_soft_consumption_past_the_limit() {
                let db = $db;
                let mut conn = db.conn();
                let all =
                    reserve::<Seats, _>(&mut conn, &"soft".to_owned(), 100, TTL, now()).unwrap();
                let later = now() + chrono::Duration::seconds(60);
                let soft =
                    try_consume_soft::<Seats, _>(&mut conn, &"soft".to_owned(), 104, 5, later)
                        .unwrap();
                assert_eq!((soft.used, soft.reserved, soft.overshoot()), (104, 0, 4));
                assert!(matches!(
                    commit(&mut conn, &all, 50, later),
                    Err(Error::NotFound(_))
                ));
            }

            #[test]
            fn a_soft_limit_overshoots_by_at_most_its_margin_under_16_threads_and_says_so() {
                let db = $db;
                let pool = db.pool(16);
                let p = pool.clone();
                let results = race(16, move |_| {
                    let mut conn = p.get().unwrap();
                    let mut overshoots = Vec::new();
                    for _ in 0..10 {
                        match try_consume_soft::<Seats, _>(&mut conn, &"soft".to_owned(), 1, 5, now())
                        {
                            Ok(u) => overshoots.push(u.overshoot()),
                            Err(Error::QuotaExceeded { .. }) => {}
                            // Refused, and the row kept changing past the refusal's tries: retryable, nothing applied.
                            Err(e @ Error::SerializationFailure(_)) => assert!(e.is_retryable()),
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                    overshoots
                });
                let accepted: Vec<i64> = results.into_iter().flatten().collect();
                assert_eq!(accepted.len(), 105);
                let mut over: Vec<i64> = accepted.into_iter().filter(|o| *o > 0).collect();
                over.sort_unstable();
                assert_eq!(
                    over,
                    vec![1, 2, 3, 4, 5],
                    "each unit past the limit is reported"
                );
                let mut conn = db.conn();
                let u = usage::<Seats, _>(&mut conn, &"soft".to_owned())
                    .unwrap()
                    .unwrap();
                assert_eq!((u.used, u.overshoot()), (105, 5));
            }

            #[test]
            fn bad_input_and_a_missing_quota_are_refused_without_writing() {
                let db = $db;
                let mut conn = db.conn();
                for bad in [0, -1] {
                    assert!(matches!(
                        try_consume::<Seats, _>(&mut conn, &gig(), bad, now()),
                        Err(Error::InvalidInput(_))
                    ));
                }
                assert!(matches!(
                    reserve::<Seats, _>(&mut conn, &gig(), 1, Duration::ZERO, now()),
                    Err(Error::InvalidInput(ref e)) if e.field == "ttl"
                ));
                assert!(matches!(
                    try_consume::<Seats, _>(&mut conn, &"nothing".to_owned(), 1, now()),
                    Err(Error::NotFound(_))
                ));
                assert!(matches!(
                    try_consume::<Seats, _>(&mut conn, &String::new(), 1, now()),
                    Err(Error::InvalidInput(_))
                ));
                let r = reserve::<Seats, _>(&mut conn, &gig(), 5, TTL, now()).unwrap();
                assert!(matches!(
                    commit(&mut conn, &r, 6, now()),
                    Err(Error::InvalidInput(ref e)) if e.field == "actual"
                ));
                assert_eq!(holds(&mut conn), 1);
            }
        }
    };
}

quota_guarantees!(postgres, db = TestDb::with_sql(PG_SQL), conn = PgConnection);
quota_guarantees!(
    sqlite,
    db = TestSqlite::with_sql(SQLITE_SQL),
    conn = SqliteConnection
);
quota_guarantees!(
    mysql,
    db = TestMysql::with_sql(MYSQL_SQL),
    conn = MysqlConnection
);

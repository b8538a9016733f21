//! What distributed PostgreSQL (Citus, distributed by `account`) needs of the usage tables,
//! checked on plain PostgreSQL (docs/citus.md): keys that include the account, statements that
//! name it, and a repeated idempotency key recognised whatever its unique key is called.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use std::time::Duration;
use upsert_kit::{ConstraintKind, Error};
use upsert_kit_support::citus::{capture, distribution_problems, unrouted, Placement};
use upsert_kit_support::TestDb;
use usage_tracking::counter::increment;
use usage_tracking::quota::{commit, release, reserve, try_consume};
use usage_tracking::{get_or_create_usage_period, set_usage_limits, Metric, Usage, PG_MIGRATIONS};

const ACCOUNT: i64 = 7;

fn at() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 15)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
}

const TABLES: [(&str, Placement<'static>); 4] = [
    ("usage_accounts", Placement::Distributed("account")),
    ("usage_periods", Placement::Distributed("account")),
    ("usage_events", Placement::Distributed("account")),
    ("usage_reservations", Placement::Distributed("account")),
];

#[test]
fn every_unique_key_and_foreign_key_of_the_usage_tables_includes_the_account() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    assert_eq!(
        distribution_problems(&mut conn, &TABLES),
        Vec::<String>::new()
    );

    // The first migration alone is what Citus refused: surrogate primary keys and foreign
    // keys by the period's id.
    conn.revert_last_migration(PG_MIGRATIONS).unwrap();
    let problems = distribution_problems(&mut conn, &TABLES);
    for expected in [
        "usage_periods: constraint usage_periods_pkey on (id) does not include the distribution column account",
        "usage_events: constraint usage_events_pkey on (id) does not include the distribution column account",
        "usage_events: foreign key usage_events_period_id_fkey (period_id) -> usage_periods (id) does not pair the distribution columns account and account",
        "usage_reservations: constraint usage_reservations_pkey on (id) does not include the distribution column account",
    ] {
        assert!(problems.iter().any(|p| p == expected), "{expected:?} not in {problems:#?}");
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn every_statement_of_the_usage_functions_names_the_account() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    let ttl = Duration::from_secs(60);
    let limits = Usage {
        tokens: 100,
        reports: 10,
        chats: 10,
    };
    let ((), statements) = capture(&mut conn, |c| {
        set_usage_limits(c, ACCOUNT, limits, at()).unwrap();
        get_or_create_usage_period(c, ACCOUNT, at()).unwrap();
        let first = increment(
            c,
            ACCOUNT,
            "k-1",
            at(),
            Usage {
                reports: 1,
                ..Usage::default()
            },
        )
        .unwrap();
        let again = increment(
            c,
            ACCOUNT,
            "k-1",
            at(),
            Usage {
                reports: 1,
                ..Usage::default()
            },
        )
        .unwrap();
        assert!(first.applied && !again.applied);
        assert!(matches!(
            increment(
                c,
                ACCOUNT,
                "k-1",
                at(),
                Usage {
                    reports: 2,
                    ..Usage::default()
                }
            ),
            Err(Error::IdempotencyConflict { .. })
        ));
        let held = reserve(c, ACCOUNT, Metric::Tokens, 60, at(), ttl).unwrap();
        commit(c, &held, 10, at()).unwrap();
        let held = reserve(c, ACCOUNT, Metric::Tokens, 30, at(), ttl).unwrap();
        assert!(release(c, &held).unwrap());
        // Expired, then swept by a refused reservation of the same period.
        let _expired = reserve(c, ACCOUNT, Metric::Tokens, 80, at(), ttl).unwrap();
        let later = at() + chrono::Duration::seconds(120);
        let _held = reserve(c, ACCOUNT, Metric::Tokens, 50, later, ttl).unwrap();
        // Refused even after the sweep: the period is read back for what is available.
        assert!(matches!(
            try_consume(c, ACCOUNT, Metric::Tokens, 1000, later),
            Err(Error::QuotaExceeded { .. })
        ));
        try_consume(c, ACCOUNT, Metric::Chats, 1, later).unwrap();
    });
    for s in &statements {
        eprintln!("{}", s.split("-- binds:").next().unwrap_or(s).trim());
    }
    let mut touched = 0;
    for (table, _) in TABLES {
        let on_table = statements
            .iter()
            .filter(|s| s.contains(&format!("\"{table}\"")) || s.contains(&format!(" {table} ")))
            .count();
        touched += on_table;
        assert!(
            on_table > 0,
            "no statement on {table} was captured: {statements:#?}"
        );
        let unrouted = unrouted(&statements, table, &["account"]);
        assert!(
            unrouted.is_empty(),
            "statements on {table} without the account: {unrouted:#?}"
        );
    }
    assert!(touched >= 15, "{statements:#?}");
}

/// The ledger's unique key on `(account, idempotency_key)`, renamed or replaced by a unique
/// index that is no constraint (as Citus reports it: with a shard suffix, or not at all).
#[test]
fn a_repeated_key_is_recognised_by_the_unique_violation_whatever_its_key_is_called() {
    for change in [
        "ALTER TABLE usage_events RENAME CONSTRAINT usage_events_account_idempotency_key_key \
         TO usage_events_account_idempotency_key_key_102208",
        "ALTER TABLE usage_events DROP CONSTRAINT usage_events_account_idempotency_key_key; \
         CREATE UNIQUE INDEX ledger_keys ON usage_events (account, idempotency_key)",
    ] {
        let db = TestDb::migrated(PG_MIGRATIONS);
        let mut conn = db.conn();
        conn.batch_execute(change).unwrap();
        set_usage_limits(&mut conn, ACCOUNT, Usage::tokens(1000), at()).unwrap();
        let first = increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(5)).unwrap();
        let again = increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(5)).unwrap();
        assert!(first.applied && !again.applied, "{change}");
        assert_eq!(
            (again.event_id, again.totals),
            (first.event_id, first.totals),
            "{change}"
        );
        assert!(
            matches!(
                increment(&mut conn, ACCOUNT, "k", at(), Usage::tokens(6)),
                Err(Error::IdempotencyConflict { .. })
            ),
            "{change}"
        );
        // Inside the caller's transaction too (a savepoint around the statement).
        let in_tx = conn
            .transaction(|c| increment(c, ACCOUNT, "k", at(), Usage::tokens(5)))
            .unwrap();
        assert!(!in_tx.applied, "{change}");
        let used = get_or_create_usage_period(&mut conn, ACCOUNT, at())
            .unwrap()
            .row
            .tokens_used;
        assert_eq!(used, 5, "{change}");
    }
}

/// A unique violation that is not the ledger key's (another unique index of the ledger) is
/// reported as such, not taken for a replay: the key is read, and it is not there.
#[test]
fn a_unique_violation_of_another_index_is_an_error_and_not_a_replay() {
    let db = TestDb::migrated(PG_MIGRATIONS);
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE UNIQUE INDEX one_request_per_hash ON usage_events (account, request_hash)",
    )
    .unwrap();
    set_usage_limits(&mut conn, ACCOUNT, Usage::tokens(1000), at()).unwrap();
    increment(&mut conn, ACCOUNT, "k-1", at(), Usage::tokens(5)).unwrap();
    let err = increment(&mut conn, ACCOUNT, "k-2", at(), Usage::tokens(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Constraint {
                kind: ConstraintKind::Unique,
                ..
            }
        ),
        "{err:?}"
    );
    let used = get_or_create_usage_period(&mut conn, ACCOUNT, at())
        .unwrap()
        .row
        .tokens_used;
    assert_eq!(used, 5);
}

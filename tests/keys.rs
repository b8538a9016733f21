//! Keys mean the same on every backend: `'a'`, `'a '` and `'A'` are three keys of the
//! ready-made tables (`upsert_kit::tables`) and of the README's example tables, on PostgreSQL,
//! SQLite and MySQL/MariaDB. On MySQL that takes a binary NO PAD collation (`upsert_kit::limits`):
//! under the default ones `'a'` and `'A'` are one key, under a PAD SPACE one (`utf8mb4_bin`)
//! `'a'` and `'a '` are. The test databases' own default is `utf8mb4_bin`, so only the tables'
//! declared collation can make these pass.

use diesel::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;
use upsert_kit::idempotency::{run, IdempotencyKey};
use upsert_kit::tables::{create_tables, upsert_kit_quotas, IdempotencyKeys, Quotas};
use upsert_kit::UpsertOutcome;
use upsert_kit::{atomic_upsert, bulk_upsert, get_or_create, quota, Obtained, UpsertModel};
use upsert_kit_support::{TestDb, TestMysql, TestSqlite};

/// Three keys that a NO PAD binary collation keeps apart, and no other kind of collation does.
const KEYS: [&str; 3] = ["a", "a ", "A"];

fn now() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 12, 1)
        .unwrap()
        .and_hms_opt(9, 0, 0)
        .unwrap()
}

// The README's example tables and declarations.

diesel::table! {
    products (id) {
        id -> BigInt,
        sku -> Text,
        name -> Text,
        price_cents -> BigInt,
        created_at -> Timestamp,
    }
}

#[derive(Debug, Clone, Insertable, UpsertModel)]
#[diesel(table_name = products)]
#[upsert(key(sku), keep(created_at))]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub created_at: chrono::NaiveDateTime,
}

fn product(sku: &str, price_cents: i64) -> Product {
    Product {
        sku: sku.into(),
        name: format!("product {sku:?}"),
        price_cents,
        created_at: now(),
    }
}

diesel::table! {
    accounts (id) {
        id -> BigInt,
        email -> Text,
        plan -> Text,
    }
}

#[derive(Insertable, UpsertModel)]
#[diesel(table_name = accounts)]
#[upsert(key(email))]
pub struct NewAccount {
    pub email: String,
    pub plan: String,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i64,
    pub email: String,
    pub plan: String,
}

diesel::table! { request_keys (key) { key -> Text, hash -> Text, result -> Nullable<Text>, created_at -> Timestamp } }

upsert_kit::ledger! {
    table = request_keys, key = key, fingerprint = hash, result = result, created_at = created_at;
    pub struct RequestKeys;
}

/// The README's tables on SQLite, as its examples create them.
const SQLITE_README_TABLES: &str = "
    CREATE TABLE products (
        id INTEGER PRIMARY KEY,
        sku TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL);
    CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, plan TEXT NOT NULL);
    CREATE TABLE request_keys (key TEXT PRIMARY KEY NOT NULL, hash TEXT NOT NULL, result TEXT,
        created_at TIMESTAMP NOT NULL);";

/// Their PostgreSQL twins.
const PG_README_TABLES: &str = "
    CREATE TABLE products (
        id BIGSERIAL PRIMARY KEY,
        sku TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        price_cents BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL);
    CREATE TABLE accounts (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE, plan TEXT NOT NULL);
    CREATE TABLE request_keys (key TEXT PRIMARY KEY, hash TEXT NOT NULL, result TEXT,
        created_at TIMESTAMP NOT NULL);";

/// The README's MySQL tables: the `sql` block of its "Column types on MySQL" paragraph, read
/// from the README itself so that the two cannot drift apart.
fn readme_mysql_tables() -> &'static str {
    let readme = include_str!("../README.md");
    let paragraph = &readme[readme
        .find("Column types on MySQL")
        .expect("the README's paragraph on MySQL column types")..];
    let start = paragraph.find("```sql\n").expect("its sql block") + "```sql\n".len();
    let len = paragraph[start..]
        .find("```")
        .expect("the end of its sql block");
    &paragraph[start..start + len]
}

/// Each of the three keys is a row of its own in every ready-made table: three ledger keys
/// each with its own result, three quotas each with its own limit and usage, a reservation
/// counted against its own quota only.
macro_rules! three_keys_in_the_ready_made_tables {
    ($conn:expr) => {{
        let conn = $conn;
        create_tables(conn).unwrap();
        for (i, k) in (0_i64..).zip(KEYS) {
            let key = IdempotencyKey::new(k).unwrap();
            let first =
                run::<IdempotencyKeys, _, _, _>(conn, &key, "same", now(), |_| Ok(i)).unwrap();
            assert!(
                first.applied,
                "the ledger key {k:?} was taken by another key"
            );
        }
        for (i, k) in (0_i64..).zip(KEYS) {
            let key = IdempotencyKey::new(k).unwrap();
            let again =
                run::<IdempotencyKeys, _, _, _>(conn, &key, "same", now(), |_| Ok(-1_i64)).unwrap();
            assert_eq!((again.value, again.applied), (i, false), "ledger key {k:?}");
        }

        for (i, k) in (1_i64..).zip(KEYS) {
            diesel::insert_into(upsert_kit_quotas::table)
                .values((
                    upsert_kit_quotas::quota_key.eq(k),
                    upsert_kit_quotas::quota_limit.eq(10 * i),
                ))
                .execute(conn)
                .unwrap_or_else(|e| panic!("quota key {k:?}: {e}"));
        }
        for (i, k) in (1_i64..).zip(KEYS) {
            let usage = quota::try_consume::<Quotas, _>(conn, &k.to_owned(), i, now()).unwrap();
            assert_eq!(
                (usage.used, usage.available()),
                (i, 9 * i),
                "quota key {k:?}"
            );
        }
        let held =
            quota::reserve::<Quotas, _>(conn, &"a ".to_owned(), 5, Duration::from_secs(60), now())
                .unwrap();
        assert_eq!(held.key, "a ");
        let rows: BTreeMap<String, (i64, i64, i64)> = upsert_kit_quotas::table
            .select((
                upsert_kit_quotas::quota_key,
                (
                    upsert_kit_quotas::quota_limit,
                    upsert_kit_quotas::used,
                    upsert_kit_quotas::reserved,
                ),
            ))
            .load(conn)
            .unwrap()
            .into_iter()
            .collect();
        let expected: BTreeMap<String, (i64, i64, i64)> = [
            ("a".to_owned(), (10, 1, 0)),
            ("a ".to_owned(), (20, 2, 5)),
            ("A".to_owned(), (30, 3, 0)),
        ]
        .into();
        assert_eq!(rows, expected);
    }};
}

/// Each of the three keys is a row of its own in the README's example tables, through the
/// upsert, the bulk upsert, get-or-create and a ledger of the user's own.
macro_rules! three_keys_in_the_readme_tables {
    ($conn:expr) => {{
        let conn = $conn;
        for k in KEYS {
            assert_eq!(
                atomic_upsert(conn, &product(k, 100)).unwrap(),
                UpsertOutcome::Inserted,
                "the sku {k:?} updated another key's row"
            );
        }
        let outcome =
            bulk_upsert(conn, &[product("a", 1), product("a ", 2), product("A", 3)]).unwrap();
        assert_eq!(
            (outcome.inserted, outcome.updated, outcome.collapsed),
            (0, 3, 0)
        );
        let prices: BTreeMap<String, i64> = products::table
            .select((products::sku, products::price_cents))
            .load(conn)
            .unwrap()
            .into_iter()
            .collect();
        let expected: BTreeMap<String, i64> = [
            ("a".to_owned(), 1),
            ("a ".to_owned(), 2),
            ("A".to_owned(), 3),
        ]
        .into();
        assert_eq!(prices, expected);

        let mut ids = Vec::new();
        for k in KEYS {
            let signup = NewAccount {
                email: k.into(),
                plan: "free".into(),
            };
            let got: Obtained<Account> = get_or_create(conn, &signup).unwrap();
            assert!(got.created, "the email {k:?} found another key's row");
            assert_eq!(got.row.email, k);
            ids.push(got.row.id);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3);

        for (i, k) in (0_i64..).zip(KEYS) {
            let key = IdempotencyKey::new(k).unwrap();
            let first = run::<RequestKeys, _, _, _>(conn, &key, "same", now(), |_| Ok(i)).unwrap();
            assert!(
                first.applied,
                "the request key {k:?} was taken by another key"
            );
        }
    }};
}

#[test]
fn three_keys_in_the_ready_made_tables_on_postgres() {
    let db = TestDb::new();
    three_keys_in_the_ready_made_tables!(&mut db.conn());
}

#[test]
fn three_keys_in_the_ready_made_tables_on_sqlite() {
    let db = TestSqlite::new();
    three_keys_in_the_ready_made_tables!(&mut db.conn());
}

#[test]
fn three_keys_in_the_ready_made_tables_on_mysql() {
    let db = TestMysql::new();
    three_keys_in_the_ready_made_tables!(&mut db.conn());
}

#[test]
fn three_keys_in_the_readme_tables_on_postgres() {
    let db = TestDb::with_sql(PG_README_TABLES);
    three_keys_in_the_readme_tables!(&mut db.conn());
}

#[test]
fn three_keys_in_the_readme_tables_on_sqlite() {
    let db = TestSqlite::with_sql(SQLITE_README_TABLES);
    three_keys_in_the_readme_tables!(&mut db.conn());
}

#[test]
fn three_keys_in_the_readme_tables_on_mysql() {
    let db = TestMysql::with_sql(readme_mysql_tables());
    three_keys_in_the_readme_tables!(&mut db.conn());
}

/// Without the declared collation the same MySQL tables merge the keys: what the tests above
/// guard against (and why they can fail).
#[test]
fn the_readme_tables_in_a_pad_space_collation_merge_a_and_a_space_on_mysql() {
    let db =
        TestMysql::with_sql(&readme_mysql_tables().replace("utf8mb4_nopad_bin", "utf8mb4_bin"));
    let mut conn = db.conn();
    assert_eq!(
        atomic_upsert(&mut conn, &product("a", 1)).unwrap(),
        UpsertOutcome::Inserted
    );
    let second = atomic_upsert(&mut conn, &product("a ", 2));
    let rows: i64 = products::table.count().get_result(&mut conn).unwrap();
    assert_eq!(
        rows, 1,
        "a PAD SPACE collation kept 'a' and 'a ' apart ({second:?})"
    );
}

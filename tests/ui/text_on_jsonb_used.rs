// A `String` field on a `Jsonb` column: the column holds JSON, not text.
use upsert_kit::UpsertModel;

diesel::table! {
    stats (id) {
        id -> BigInt,
        stats_type -> Text,
        data -> Jsonb,
    }
}

#[derive(UpsertModel)]
#[diesel(table_name = stats)]
#[upsert(key(stats_type))]
struct Stats {
    stats_type: String,
    data: String,
}

fn main() {}

// The model used as an adopter uses it: one row, then many.
fn store(conn: &mut diesel::PgConnection, row: &Stats, rows: &[Stats]) {
    let _ = upsert_kit::atomic_upsert(conn, row);
    let _ = upsert_kit::bulk_upsert(conn, rows);
}

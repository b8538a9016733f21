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

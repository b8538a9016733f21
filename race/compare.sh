#!/usr/bin/env bash
# The crate next to the database's own limit and to the code it replaces, in one go: the same
# statements, table and payload through pgbench (prepared) and through upsert-race (the naive
# pattern, plain Diesel's upsert and the crate), then the ratios crate/pgbench and
# crate/plain Diesel.
#
#   cargo build --release -p upsert-race
#   race/compare.sh [SECONDS]             # per measurement, default 5; ROUNDS=3 rounds
#   CLIENTS="1 8 32" race/compare.sh 3    # the single-row clients (default "1 8")
#   IN_FLIGHT=1 race/compare.sh           # the coalescing writer's batches in flight (default: the library's)
#
# Environment: PGOPTIONS applies to both sides (e.g. '-c synchronous_commit=off' to take the
# commit's flush out of the measurement), DATABASE_URL (admin URL, default postgres://postgres@127.0.0.1:5432/postgres),
# RACE (the upsert-race binary, default target/release/upsert-race), OUT (directory for the
# JSON and pgbench logs, default a temporary one). Needs pgbench, psql and jq.
#
# pgbench works in a database of its own (upsert_kit_compare_<pid>, dropped at exit) whose
# tables are those of the race database: the PostgreSQL migrations of jobs/sync, jobs/usage and
# jobs/backfill, in version order; upsert-race creates and drops its own. Paths are relative to
# the workspace root, where the script runs whatever the directory it is called from.
set -euo pipefail

cd "$(dirname "$0")/.."   # the workspace root
SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
ADMIN=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
RACE=${RACE:-target/release/upsert-race}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
KEYS=64
BATCH=1000
BULK_KEYS=20000
TS="2026-11-29 00:00:00"
CLIENTS=${CLIENTS:-1 8}
IN_FLIGHT=${IN_FLIGHT:-}
NPROC=$(nproc)

for tool in pgbench psql jq; do
    command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 2; }
done
[ -x "$RACE" ] || { echo "no $RACE: run cargo build --release -p upsert-race" >&2; exit 2; }

DB=upsert_kit_compare_$$
# The admin URL with its database replaced (its query string kept).
DBURL=$(printf '%s' "$ADMIN" | sed -E "s#^([a-z]+://[^/?]*)(/[^?]*)?#\1/$DB#")
psql "$ADMIN" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
trap 'psql "$ADMIN" -qX -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
# Every crate's migrations, ordered by their version (the directory name), as Diesel runs them.
for up in $(for f in jobs/*/migrations/postgres/*/up.sql; do
                printf '%s %s\n' "$(basename "$(dirname "$f")")" "$f"
            done | sort | cut -d' ' -f2); do
    psql "$DBURL" -qX -v ON_ERROR_STOP=1 -f "$up" >/dev/null
done
PAYLOAD=$("$RACE" --print-payload)

seed() { # rows
    psql "$DBURL" -qX -v ON_ERROR_STOP=1 -v rows="$1" -v payload="$PAYLOAD" -v ts="$TS" \
        -f race/pgbench/seed.sql >/dev/null
}

pgbench_tps() { # clients script
    local jobs=$(( $1 < NPROC ? $1 : NPROC ))
    pgbench -n -M prepared -c "$1" -j "$jobs" -T "$SECS" -f "race/pgbench/$2" \
        -D keys=$KEYS -D batch=$BATCH -D bulk_keys=$BULK_KEYS -D payload="$PAYLOAD" -D ts="$TS" \
        "$DBURL" >"$OUT/pgbench-$2-$1.log" 2>&1 \
        || { cat "$OUT/pgbench-$2-$1.log" >&2; exit 1; }
    sed -nE 's/^tps = ([0-9.]+) .*without initial connection time.*/\1/p' "$OUT/pgbench-$2-$1.log"
}

race() { # json-name args...
    local json="$OUT/$1.json"; shift
    DATABASE_URL="$ADMIN" "$RACE" --no-progress --duration "$SECS" --json "$json" "$@" >"$json.txt"
    cat "$json.txt" >&2
}

per_sec() { # json-name pattern workers
    jq -r --arg p "$2" --argjson w "$3" \
        '.[] | select(.pattern == $p and .workers == $w) | .per_sec' "$OUT/$1.json"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "pgbench $(pgbench --version | awk '{print $3}'), $ROUNDS rounds, $SECS s per measurement, $NPROC cores, ${IN_FLIGHT:-the default number of} coalesced batches in flight; logs in $OUT" >&2

# The machine is shared and its fsync latency moves: every round measures both sides back to
# back, and the ratio is taken over the sums of all rounds (per-round ratios are shown too).
declare -A SUM ROUND_RATIOS
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN { print a + b }'); }
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    # Single-row upsert at 1 and 8 clients: pgbench, then the crate.
    for c in $CLIENTS; do
        seed $KEYS
        pg=$(pgbench_tps "$c" single_upsert.sql)
        race "single-$round-$c" --scenario upsert --patterns naive,diesel,atomic,coalesced --workers "$c" --keys $KEYS \
            ${IN_FLIGHT:+--in-flight "$IN_FLIGHT"}
        crate=$(per_sec "single-$round-$c" atomic "$c")
        coalesced=$(per_sec "single-$round-$c" coalesced "$c")
        add "coalesced_single_$c" "$coalesced"
        ROUND_RATIOS[coalesced_$c]+="$(ratio "$coalesced" "$pg") "
        add "pg_single_$c" "$pg"; add "crate_single_$c" "$crate"
        add "naive_single_$c" "$(per_sec "single-$round-$c" naive "$c")"
        add "diesel_single_$c" "$(per_sec "single-$round-$c" diesel "$c")"
        ROUND_RATIOS[single_$c]+="$(ratio "$crate" "$pg") "
    done
    # 1,000-row batches on one connection: pgbench unnest and generate_series, then the
    # crate's bulk upsert and its loop of single upserts.
    seed $BULK_KEYS
    unnest=$(awk -v t="$(pgbench_tps 1 bulk_unnest.sql)" -v b=$BATCH 'BEGIN { print t * b }')
    seed $BULK_KEYS
    generate=$(awk -v t="$(pgbench_tps 1 bulk_generate.sql)" -v b=$BATCH 'BEGIN { print t * b }')
    seed $BULK_KEYS
    parse=$(awk -v t="$(pgbench_tps 1 bulk_generate_parse.sql)" -v b=$BATCH 'BEGIN { print t * b }')
    race "bulk-$round" --scenario bulk --patterns naive,diesel,atomic --workers 1 --batch $BATCH --bulk-keys $BULK_KEYS
    bulk=$(per_sec "bulk-$round" atomic 1)
    loop=$(per_sec "bulk-$round" naive 1)
    add diesel_bulk "$(per_sec "bulk-$round" diesel 1)"
    add pg_unnest "$unnest"; add pg_generate "$generate"; add pg_parse "$parse"; add crate_bulk "$bulk"; add crate_loop "$loop"
    ROUND_RATIOS[unnest]+="$(ratio "$bulk" "$unnest") "
    ROUND_RATIOS[generate]+="$(ratio "$bulk" "$generate") "
    ROUND_RATIOS[parse]+="$(ratio "$bulk" "$parse") "
    ROUND_RATIOS[loop]+="$(ratio "$bulk" "$loop") "
done

mean() { awk -v s="${SUM[$1]:-0}" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }
or_dash() { if [ "$1" = "-" ]; then echo -; else mean "$1"; fi; }
line() { # label clients pgbench-key naive-key diesel-key crate-key ratios-key
    local r d="-"
    if [ "$3" = "-" ]; then r=$(ratio "${SUM[crate_bulk]}" "${SUM[crate_loop]}"); else r=$(ratio "${SUM[$6]}" "${SUM[$3]}"); fi
    [ "$5" = "-" ] || d=$(ratio "${SUM[$6]}" "${SUM[$5]}")
    printf '%-50s %7s %9s %9s %9s %9s %8s %8s   %s\n' "$1" "$2" "$(or_dash "$4")" "$(or_dash "$5")" \
        "$(mean "$6")" "$(or_dash "$3")" "$r" "$d" "${ROUND_RATIOS[$7]}"
}
printf '\n%-50s %7s %9s %9s %9s %9s %8s %8s   %s\n' "measurement (mean of $ROUNDS rounds x ${SECS}s)" \
    clients naive diesel crate pgbench /pgbench /diesel "crate/pgbench per round"
for c in $CLIENTS; do
    line "single-row upsert, ops/s (-M prepared)" "$c" "pg_single_$c" "naive_single_$c" "diesel_single_$c" "crate_single_$c" "single_$c"
    line "  the same through the coalescing writer" "$c" "pg_single_$c" - "diesel_single_$c" "coalesced_single_$c" "coalesced_$c"
done
line "1,000-row batch, rows/s (unnest)" 1 pg_unnest crate_loop diesel_bulk crate_bulk unnest
line "1,000-row batch, rows/s (server-generated)" 1 pg_generate crate_loop diesel_bulk crate_bulk generate
line "1,000-row batch, rows/s (generated, JSON per row)" 1 pg_parse crate_loop diesel_bulk crate_bulk parse
line "loop of single upserts, rows/s (ratio: bulk/loop)" 1 - - - crate_loop loop
echo "naive: the naive pattern (single rows: query-then-upsert; batches: a loop of the crate's single upserts); diesel: plain Diesel's upsert (batches: one multi-row values(&vec))"

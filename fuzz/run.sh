#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 600 s each), outside CI:
#   fuzz/run.sh [seconds] [target…]
# cargo-fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 lets it pass them.
# Install the runner once with `cargo install cargo-fuzz`. Corpora start from the jobs'
# example captures; findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(strava_capture wakatime_capture value_checks)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    case $t in
        strava_capture) cp ../jobs/sync/examples/data/strava*.json "corpus/$t/" 2>/dev/null || true ;;
        wakatime_capture) cp ../jobs/sync/examples/data/wakatime*.json "corpus/$t/" 2>/dev/null || true ;;
        value_checks) cp ../jobs/sync/examples/data/*.json "corpus/$t/" 2>/dev/null || true ;;
    esac
    echo "==> $t for ${seconds}s"
    cargo fuzz run "$t" "corpus/$t" -- -dict=json.dict -max_total_time="$seconds" -max_len=65536 -print_final_stats=1
done

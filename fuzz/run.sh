#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) from a copy of its seed corpus and prints
# the executions and exec/s of each; fails on the first crash (its input is left in the work
# directory). Used by tests/run.sh (the CI smoke step) and for longer runs:
#
#     bash fuzz/run.sh 600                      # 10 minutes per target
#     FUZZ_WORK=/tmp/fz bash fuzz/run.sh 3600   # keep the grown corpora in /tmp/fz
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on stable via RUSTC_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-30}
work=${FUZZ_WORK:-$PWD/../target/tmp/fuzz-smoke}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed (.ci/run installs it: cargo install cargo-fuzz --locked)" >&2
    exit 1
fi
rm -rf "$work"
mkdir -p "$work"
RUSTC_BOOTSTRAP=1 cargo fuzz build
for t in $(cargo fuzz list); do
    mkdir -p "$work/$t"
    cp corpus/"$t"/* "$work/$t/"
    log="$work/$t.log"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$work/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -artifact_prefix="$work/$t-" \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed (artifacts in $work)" >&2
        exit 1
    fi
    runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
    echo "fuzz $t: ${runs:-?} ($(grep -oE 'exec/s: [0-9]+' "$log" | tail -n 1)), corpus $(ls "$work/$t" | wc -l) inputs"
done

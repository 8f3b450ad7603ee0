#!/bin/sh
# Instructions per 4 KiB request (frontend + backend + sim, memcpy excluded) for each mode,
# from callgrind counts of the deterministic `seedbench --fixed-ops` mode.
#
# Only the request loop is counted (--toggle-collect on bench::run_worker: no setup, no
# disk fill, no teardown). Fixed per-run costs inside the loop (first use of each pool page:
# allocation, grant, first map) are removed by differencing two runs, N and 2N requests:
#     Ir/request = (Ir(2N) - Ir(N)) / N        for the total and for the memcpy symbols,
# and the memcpy share (glibc __memcpy_*/__memmove_* symbols, all leaves, so exclusive =
# inclusive) is subtracted.
#
# Usage: boards/sim/bench/callgrind.sh [N] [GUESTS] [MODES]   (defaults 20000 15 "map persistent copy zerocopy")
set -eu
N=${1:-20000}
G=${2:-15}
MODES=${3:-"map persistent copy zerocopy"}
BIN=${BIN:-target/release/seedbench}
OUT=${TMPDIR:-/tmp}/xenblk-cg.$$
cargo build --release -q -p xenblk-sim --bin seedbench
count() { # mode ops -> "total memcpy"
    valgrind --tool=callgrind --toggle-collect='xenblk_sim::bench::run_worker*' \
        --callgrind-out-file="$OUT" "$BIN" --fixed-ops "$2" --guests "$G" --modes "$1" --disk-kib 256 >/dev/null 2>&1
    callgrind_annotate "$OUT" 2>/dev/null | awk '
        /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
        /__mem(cpy|move)/ { gsub(",", "", $1); mc += $1 }
        END { printf "%d %d\n", total, mc }'
    rm -f "$OUT"
}
printf '| mode | Ir/request total | memcpy Ir/request | Ir/request without memcpy |\n|---|---:|---:|---:|\n'
for m in $MODES; do
    set -- $(count "$m" "$N")
    t1=$1 c1=$2
    set -- $(count "$m" $((2 * N)))
    t2=$1 c2=$2
    awk -v m="$m" -v n="$N" -v t1="$t1" -v t2="$t2" -v c1="$c1" -v c2="$c2" 'BEGIN {
        t = (t2 - t1) / n; c = (c2 - c1) / n; printf "| %s | %.0f | %.0f | %.0f |\n", m, t, c, t - c }'
done

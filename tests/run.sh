#!/usr/bin/env bash
# The test command: formatting, clippy, every supported feature combination, the workspace
# tests (sim board, config language, the Xen-header interop proof), the logging backends, the
# freestanding no_std link, and the config tools.
#
#     bash tests/run.sh
#
# Installs nothing (.ci/run does that on a clean machine; tests/xen_headers.rs installs the
# Xen headers itself when it can). Every step runs even if an earlier one failed; the last line
# is `N passed, M failed` and the exit status is non-zero if any step failed. All steps share
# the workspace's target directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

passed=0
failed=0
failures=()
step_no=0
start_all=$SECONDS

# run_step NAME COMMAND...: runs COMMAND in a subshell with `set -e` in force.
run_step() {
    local name=$1
    shift
    step_no=$((step_no + 1))
    local t0=$SECONDS rc
    echo
    echo "==> [$step_no] $name"
    set +e
    (
        set -euo pipefail
        "$@"
    )
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "<== [$step_no] ok: $name ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1))
        failures+=("[$step_no] $name")
        echo "<== [$step_no] FAILED (status $rc): $name ($((SECONDS - t0)) s)"
    fi
}

fmt() { cargo fmt --all --check; }

clippy_workspace() { cargo clippy --workspace --all-targets -- -D warnings; }

# The feature matrix: one line of tests/features.txt. The tests run even when clippy
# complains, so that one run reports both.
combo() {
    local features=$1 rc=0
    cargo clippy -p xenblk --no-default-features --features "$features" --all-targets -- -D warnings || rc=1
    cargo test -p xenblk --no-default-features --features "$features" || rc=1
    return "$rc"
}

workspace_tests() { cargo test --workspace; }

# The summary lines of the Xen-header proof (they are hidden in a normal test run).
xen_headers_summary() {
    local out
    out=$(cargo test -q -p xenblk --test xen_headers -- --show-output 2>&1) || {
        printf '%s\n' "$out"
        return 1
    }
    printf '%s\n' "$out" | grep '^xen_headers '
}

logging() {
    DEFMT_LOG=trace cargo check -p xenblk --features defmt
    DEFMT_LOG=trace cargo check -p xenblk --no-default-features --features frontend,pool-static,ring-linux,defmt
    cargo check -p xenblk --features log
    cargo check -p xenblk --features embedded-sdmmc
}

nostd() { bash boards/nostd-check/check.sh; }

# tests/protocol_features.rs again under the wide configs (multi-page rings, 4 queues,
# 520-segment requests, 8 indirect pages; and NetBSD's 17-segment requests), both roles.
# Its own target directory: a different config rebuilds the crate.
protocol_wide() {
    local t="$root/target/protocol-cfg"
    XENBLK_CONFIG=configs/protocol.cfg CARGO_TARGET_DIR="$t" \
        cargo test -p xenblk --no-default-features --features frontend,backend,pool-static,ring-linux \
        --test protocol_features
    XENBLK_CONFIG=configs/protocol.cfg CARGO_TARGET_DIR="$t" \
        cargo test -p xenblk --no-default-features --features frontend,backend,pool-dynamic,ring-linux \
        --test protocol_features
    XENBLK_CONFIG=configs/netbsd-indirect.cfg CARGO_TARGET_DIR="$t" \
        cargo test -p xenblk --no-default-features --features frontend,backend,pool-dynamic,ring-netbsd \
        --test protocol_features
}

# The freestanding Xen PV guest kernel (boards/xen-pv): built on the stable host target with
# its own linker script, linted, and checked (ELF notes, static, no undefined symbols, entry
# and hypercall page) for the smallest and the default config. Booting it needs the rig.
xen_pv() {
    XENBLK_CONFIG=configs/embedded-small.cfg bash boards/xen-pv/build.sh target/xen-pv/xenblk-xen-pv-embedded-small.elf
    XENBLK_CONFIG=configs/default.cfg bash boards/xen-pv/build.sh target/xen-pv/xenblk-xen-pv-default.elf
}

# The FAT volume test needs the optional embedded-sdmmc feature and mkfs.vfat.
fat() { cargo test -p xenblk --features embedded-sdmmc --test fat; }

# Every wrong feature combination fails with a compile_error! saying what to choose.
bad_features() {
    local features want out
    while IFS='|' read -r features want; do
        if out=$(cargo check -q -p xenblk --no-default-features --features "$features" 2>&1); then
            echo "features '$features' were accepted" >&2
            return 1
        fi
        if ! printf '%s\n' "$out" | grep -qF "$want"; then
            printf '%s\n' "$out" >&2
            echo "features '$features' did not fail with: $want" >&2
            return 1
        fi
        echo "features '$features': $want"
    done <<'EOF_LIST'
pool-static,ring-linux|choose at least one role
frontend,ring-linux|choose a persistent-grant pool
frontend,pool-static,pool-dynamic,ring-linux|`pool-static` and `pool-dynamic` are mutually exclusive
frontend,pool-static|choose a ring profile
frontend,pool-static,ring-linux,ring-netbsd|`ring-linux` and `ring-netbsd` are mutually exclusive
frontend,pool-static,ring-linux,defmt,log|`defmt` and `log` are mutually exclusive
EOF_LIST
}

# A config whose header says `# only-profile: NAME` is valid under that profile only; under
# the other one explain must refuse it with a located error.
config_explain() {
    local cfg profile only out
    for cfg in configs/*.cfg; do
        only=$(sed -n 's/^# only-profile: *\([a-z]*\).*/\1/p' "$cfg" | head -n 1)
        for profile in linux netbsd; do
            if [ -n "$only" ] && [ "$profile" != "$only" ]; then
                echo "explain $cfg --profile $profile (must fail)"
                if out=$(cargo run -q -p xenblk-config -- explain "$cfg" --profile "$profile" 2>&1); then
                    echo "$cfg was accepted under profile $profile" >&2
                    return 1
                fi
                printf '%s\n' "$out" | grep -qF "$cfg:" || {
                    printf '%s\n' "$out" >&2
                    return 1
                }
                continue
            fi
            echo "explain $cfg --profile $profile"
            cargo run -q -p xenblk-config -- explain "$cfg" --profile "$profile" >/dev/null
        done
    done
}

# A malformed config must fail the build with a FILE:LINE:COL diagnostic.
config_bad() {
    local dir="$root/target/tmp/run-sh"
    mkdir -p "$dir"
    printf '# A deliberately malformed config (tests/run.sh).\n\nring.order = banana\n' >"$dir/bad.cfg"
    local out
    if out=$(XENBLK_CONFIG="$dir/bad.cfg" cargo build -p xenblk 2>&1); then
        echo "the build accepted a malformed config" >&2
        return 1
    fi
    if ! printf '%s\n' "$out" | grep -F 'bad.cfg:3:14:'; then
        printf '%s\n' "$out" >&2
        echo "the failed build does not point at bad.cfg:3:14:" >&2
        return 1
    fi
}

# Bounded smoke run of every fuzz target (fuzz/run.sh: its own workspace, libFuzzer via
# cargo-fuzz on stable with RUSTC_BOOTSTRAP=1), FUZZ_SECONDS (default 30) each from a copy of
# its committed seeds; a crash fails the step. Longer runs: see the README, "Fuzzing".
fuzz_smoke() { bash fuzz/run.sh "${FUZZ_SECONDS:-30}"; }

# The ring's memory ordering under the loom model checker (tests/loom.rs): the real ring code
# over loom atomics (--cfg loom, own target directory), and the planted bugs it must catch.
loom_models() {
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$root/target/loom" cargo test -p xenblk --test loom -- \
        --nocapture --test-threads=1
}

# The bounded soak (tests/soak.rs): 15 guests, a million model-verified requests, release.
soak() { cargo test --release -p xenblk --test soak -- --nocapture; }

run_step "cargo fmt --all --check" fmt
run_step "cargo clippy --workspace --all-targets -- -D warnings" clippy_workspace
while IFS= read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [ -n "$line" ] || continue
    run_step "features $line: clippy + test" combo "$line"
done <tests/features.txt
run_step "cargo test --workspace" workspace_tests
run_step "Xen-header proof summary" xen_headers_summary
run_step "logging backends and extras (defmt, log, embedded-sdmmc)" logging
run_step "FAT volume through the frontend (embedded-sdmmc)" fat
run_step "wrong feature combinations fail with compile_error!" bad_features
run_step "protocol features under configs/protocol.cfg and configs/netbsd-indirect.cfg" protocol_wide
run_step "freestanding no_std link (boards/nostd-check/check.sh)" nostd
run_step "freestanding Xen PV guest kernel (boards/xen-pv/build.sh)" xen_pv
run_step "config explain (every config, both profiles)" config_explain
run_step "malformed config fails the build with FILE:LINE:COL" config_bad
run_step "soak: 15 guests, 1,002,000 requests (release, tests/soak.rs)" soak
run_step "loom: ring memory ordering (tests/loom.rs)" loom_models
run_step "fuzz smoke: every target for \${FUZZ_SECONDS:-30} s (fuzz/)" fuzz_smoke

echo
echo "total time: $((SECONDS - start_all)) s"
for f in "${failures[@]}"; do
    echo "failed: $f"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

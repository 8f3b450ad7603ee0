#!/usr/bin/env bash
# Builds xenblk into a freestanding binary (no std, no libc, no start files; see
# src/main.rs) for every role and pool, plus one NetBSD-profile build, and runs each one.
# Fails on any build error, any unresolved or dynamic dependency, or a non-zero exit.
#
# Usage: boards/nostd-check/check.sh        (from anywhere; uses the workspace's target/)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

combos=(
    frontend,pool-static,ring-linux
    backend,pool-static,ring-linux
    frontend,backend,pool-static,ring-linux
    frontend,pool-dynamic,ring-linux
    backend,pool-dynamic,ring-linux
    frontend,backend,pool-static,ring-netbsd
)

target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/release/xenblk-nostd-check"
export XENBLK_NOSTD_FREESTANDING=1

# The freestanding-only code (entry point, panic handler, mem*, allocator) is invisible to
# workspace clippy runs; lint it here, in the configuration that compiles all of it.
if ! out=$(cargo clippy --release -q -p xenblk-nostd-check --no-default-features \
    --features frontend,backend,pool-dynamic,ring-linux --config 'profile.release.panic="abort"' -- -D warnings 2>&1); then
    printf '%s\n' "$out" >&2
    echo "nostd-check: clippy found problems in the freestanding build" >&2
    exit 1
fi

printf '%-42s %9s %7s %9s  %s\n' features text data bss result
for features in "${combos[@]}"; do
    if ! out=$(cargo build --release -q -p xenblk-nostd-check --no-default-features --features "$features" \
        --config 'profile.release.panic="abort"' 2>&1); then
        printf '%s\n' "$out" >&2
        echo "nostd-check: the freestanding build failed for features $features" >&2
        exit 1
    fi
    # A freestanding image: statically linked, no interpreter, no dynamic section, nothing
    # left undefined.
    if readelf -lW "$bin" | grep -qE '^\s+(INTERP|DYNAMIC)\b'; then
        echo "nostd-check: $bin ($features) needs a dynamic loader" >&2
        exit 1
    fi
    if [ -n "$(nm -u "$bin")" ]; then
        echo "nostd-check: $bin ($features) has undefined symbols: $(nm -u "$bin" | tr '\n' ' ')" >&2
        exit 1
    fi
    set +e
    msg=$("$bin" 2>&1)
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        printf '%s\n' "$msg" >&2
        echo "nostd-check: the binary for features $features exited with status $rc" >&2
        exit 1
    fi
    read -r text data bss _ < <(size "$bin" | tail -n 1)
    printf '%-42s %9s %7s %9s  %s\n' "$features" "$text" "$data" "$bss" "${msg#xenblk-nostd-check: }"
done
echo "nostd-check: ${#combos[@]} freestanding builds linked and ran"

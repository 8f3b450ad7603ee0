#!/usr/bin/env bash
# Builds the xenblk Xen PV guest kernel: a static, position-dependent x86_64 ELF with Xen
# ELF notes, no std, no libc, made with the stable x86_64-unknown-linux-gnu toolchain, and
# checks it: ELF notes present, no interpreter / dynamic section, nothing undefined, the
# entry and hypercall page where the notes say. Prints the image path, size and footprint.
#
# Usage: boards/xen-pv/build.sh [OUT]     (XENBLK_CONFIG selects the driver config;
#        OUT default: target/xen-pv/xenblk-xen-pv.elf; the cargo target dir is
#        $CARGO_TARGET_DIR/xen-pv or target/xen-pv, separate because the RUSTFLAGS differ)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TD=${CARGO_TARGET_DIR:-target}/xen-pv
OUT=${1:-$TD/xenblk-xen-pv.elf}
TRIPLE=x86_64-unknown-linux-gnu
export XENBLK_XEN_PV=1
# --target keeps these flags off build scripts; static relocation: the image is linked at
# its load address and nothing relocates it.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C relocation-model=static -C code-model=small"
args=(--release -q -p xenblk-xen-pv --target "$TRIPLE" --target-dir "$TD" --config 'profile.release.panic="abort"')
if [ "${XEN_PV_CLIPPY:-1}" = 1 ]; then
  cargo clippy "${args[@]}" -- -D warnings
fi
cargo build "${args[@]}"
BIN=$TD/$TRIPLE/release/xenblk-xen-pv
mkdir -p "$(dirname "$OUT")"
cp "$BIN" "$OUT"
strip --strip-debug "$OUT"

die() { echo "xen-pv build: $*" >&2; exit 1; }
readelf -h "$OUT" | grep -q 'Type:.*EXEC' || die "$OUT is not ET_EXEC"
if readelf -lW "$OUT" | grep -qE '^\s+(INTERP|DYNAMIC)\b'; then die "$OUT needs a dynamic loader"; fi
[ -z "$(nm -u "$OUT")" ] || die "undefined symbols: $(nm -u "$OUT" | tr '\n' ' ')"
[ -z "$(readelf -rW "$OUT" | grep -E '^[0-9a-f]{8,}')" ] || die "$OUT has relocations"
# Walk the Xen notes (namesz, descsz, type, "Xen\0", desc padded to 4) and collect the types.
objcopy -O binary --only-section=.note.Xen "$OUT" "$OUT.notes"
mapfile -t W < <(od -An -v -tu4 -w4 "$OUT.notes" | tr -d ' ')
rm -f "$OUT.notes"
types=" "; i=0
while [ $i -lt ${#W[@]} ]; do
  nsz=${W[i]}; dsz=${W[i+1]}; typ=${W[i+2]}
  [ "$nsz" = 4 ] || die "malformed Xen note at word $i"
  types="$types$typ "
  i=$(( i + 3 + 1 + (dsz + 3) / 4 ))
done
for t in 1 2 3 4 5 6 8; do
  case "$types" in *" $t "*) ;; *) die "Xen ELF note type $t missing (have:$types)";; esac
done
entry=$(readelf -h "$OUT" | sed -n 's/.*Entry point address:\s*//p')
start=0x$(nm "$OUT" | sed -n 's/^\([0-9a-f]*\) T _start$/\1/p')
hpage=0x$(nm "$OUT" | sed -n 's/^\([0-9a-f]*\) T hypercall_page$/\1/p')
[ $((entry)) -eq $((start)) ] || die "entry $entry != _start $start"
[ $((hpage % 4096)) -eq 0 ] && [ $((hpage)) -ne 0 ] || die "hypercall_page $hpage not page aligned"
read -r text data bss _ < <(size "$OUT" | tail -n 1)
fsz=$(stat -c %s "$OUT")
echo "xen-pv: $OUT config=${XENBLK_CONFIG:-configs/default.cfg} file=${fsz}B text=${text} data=${data} bss=${bss} footprint=$((text + data + bss))B"

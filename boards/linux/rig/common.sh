# Shared settings for the rig scripts (sourced, not run).
# Everything downloaded or built lives under $RIG_CACHE (outside the repo).
RIG_CACHE=${RIG_CACHE:-/var/cache/xenblk-rig}
RIG_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Kernel ABI: resolved once by fetch (apt-cache depends linux-image-amd64) and recorded in
# $RIG_CACHE/versions; override with RIG_KVER=6.1.0-NN-amd64.
rig_kver() {
  if [ -n "${RIG_KVER:-}" ]; then echo "$RIG_KVER"; return; fi
  if [ -f "$RIG_CACHE/kver" ]; then cat "$RIG_CACHE/kver"; return; fi
  apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)/\1/p' | head -1
}
rig_log() { echo "rig: $*" >&2; }
rig_die() { echo "rig: ERROR: $*" >&2; exit 2; }

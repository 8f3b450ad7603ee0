# Cells of the freestanding xenblk PV guest (boards/xen-pv), sourced by dom0-init.
# The guest prints "XENBLK: ..." lines on its PV console (xenconsoled logs them) and ends
# with "XENBLK: RESULT OK md5=... mib=N ..." or "XENBLK: RESULT FAIL reason", then powers
# itself off; dom0 then compares the md5 with its own view of the image (judge).

# Prints the guest's console and the Xen log lines about the domain (crash diagnostics).
pv_diag() { # $1 domain name
  [ -f /var/log/xen/console/guest-$1.log ] && sed "s/^/[$1 console] /" /var/log/xen/console/guest-$1.log | tail -30
  xl dmesg 2>/dev/null | grep -aE "d[1-9][0-9]*|domain_crash|Unhandled|fault" | tail -15 | sed "s/^/[xl dmesg] /"
}

# A minimal vbd hotplug script (busybox sh): publishes the device's major:minor (hex) for
# blkback. The stock /etc/xen/scripts/block (bash, locking) ran past libxl's hotplug timeout
# twice when the shared host's load average was 11-21, failing `xl create` before the guest
# existed; this one does only what blkback needs (as in shared/docs/xen-rig.md).
pv_block_mini() {
  cat > /etc/xen/scripts/block-mini <<'EOS'
#!/bin/sh
P=$(xenstore-read "$XENBUS_PATH/params")
case "$1" in
  add) xenstore-write "$XENBUS_PATH/physical-device" "$(stat -L -c %t:%T "$P")" \
                      "$XENBUS_PATH/hotplug-status" connected ;;
esac
exit 0
EOS
  chmod +x /etc/xen/scripts/block-mini
}

# pv-guest-vs-linux-back: the PV guest's xenblk frontend against kernel blkback (file
# behind /dev/loop0, block-mini hotplug script).
cell_pv_guest_vs_linux_back() {
  N=pv-guest-vs-linux-back
  pv_block_mini
  [ -f /rig/xenblk-xen-pv.elf ] || { cell $N FAIL "guest ELF not in the dom0 image (boards/xen-pv/build.sh)"; return; }
  IMG=/var/lib/xenblk/pvlb.img
  mkimage $IMG || { cell $N FAIL "cannot create image"; return; }
  losetup /dev/loop0 $IMG || { cell $N FAIL "losetup failed"; return; }
  T0=$(up)
  if ! run_domu $N; then cell $N FAIL "xl create failed: $(tail -2 /tmp/xlcreate.log | tr '\n' ' ')"; losetup -d /dev/loop0; return; fi
  T1=$(up)
  losetup -d /dev/loop0
  grep -q '^XENBLK: RESULT OK' "$DOMU_LOG" 2>/dev/null || pv_diag pvlb
  judge $N $IMG "persistent=$PERS domu_wall_s=$(echo "$T0 $T1" | awk '{printf "%.1f", $2-$1}')"
  rm -f $IMG
}

# pv-guest-vs-xenblk-back: the PV guest against xenblk-back through a qdisk vbd (the
# device-model-pid trick of cell linux-front-vs-rust-back).
cell_pv_guest_vs_xenblk_back() {
  N=pv-guest-vs-xenblk-back
  [ -f /rig/xenblk-xen-pv.elf ] || { cell $N FAIL "guest ELF not in the dom0 image (boards/xen-pv/build.sh)"; return; }
  [ -x /usr/bin/xenblk-back ] || { cell $N FAIL "xenblk-back not in the dom0 image (cargo build --release -p xenblk-linux)"; return; }
  IMG=/var/lib/xenblk/pvrb.img
  mkimage $IMG || { cell $N FAIL "cannot create image"; return; }
  T0=$(up)
  if ! xl create -p /rig/$N.cfg > /tmp/xlcreate.log 2>&1; then tail -5 /tmp/xlcreate.log; cell $N FAIL "xl create failed"; return; fi
  ID=$(xl domid pvrb)
  xenblk-back --once > /tmp/xenblk-back.log 2>&1 & BPID=$!
  xenstore-write /local/domain/$ID/image/device-model-pid $BPID
  if ! xl block-attach pvrb "format=raw,vdev=xvda,access=rw,backendtype=qdisk,target=$IMG" > /tmp/attach.log 2>&1; then
    cat /tmp/attach.log; xl destroy pvrb; kill $BPID 2>/dev/null; cell $N FAIL "xl block-attach failed"; return
  fi
  xl unpause pvrb
  BE=/local/domain/0/backend/qdisk/$ID/51712
  FE=/local/domain/$ID/device/vbd/51712
  i=0; while [ "$(xenstore-read $BE/state 2>/dev/null)" != 4 ] && [ $i -lt 300 ] && xl domid pvrb >/dev/null 2>&1; do sleep 0.2; i=$((i+1)); done
  PERS="$(xenstore-read $BE/feature-persistent 2>/dev/null)/$(xenstore-read $FE/feature-persistent 2>/dev/null)"
  log "cell $N: domid=$ID backend state=$(xenstore-read $BE/state 2>/dev/null) frontend state=$(xenstore-read $FE/state 2>/dev/null) feature-persistent back/front=$PERS"
  wait_gone pvrb $DOMU_SECS
  T1=$(up)
  sleep 1
  kill -0 $BPID 2>/dev/null && { log "cell $N: xenblk-back still running, stopping it"; kill $BPID; }
  sed 's/^/[xenblk-back] /' /tmp/xenblk-back.log
  DOMU_LOG=/var/log/xen/console/guest-pvrb.log
  grep '^XENBLK: ' "$DOMU_LOG" | sed "s/^/[pvrb] /"
  grep -q '^XENBLK: RESULT OK' "$DOMU_LOG" 2>/dev/null || pv_diag pvrb
  HITS=$(sed -n 's/.*CacheStats { hits: \([0-9]*\).*/\1/p' /tmp/xenblk-back.log | tail -1)
  judge $N $IMG "persistent=$PERS backend_cache_hits=${HITS:-?} domu_wall_s=$(echo "$T0 $T1" | awk '{printf "%.1f", $2-$1}')"
  rm -f $IMG
}

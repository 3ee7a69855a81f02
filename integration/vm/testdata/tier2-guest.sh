#!/bin/bash
# PID 1 of the tier-2 Debian guest (after switch_root). Paths are inside the
# guest. No systemd: start only the system bus, the real daemon (cachelun
# serve with [tcmu] enabled on the system bus and its own iSCSI target on
# 127.0.0.1:3261) and iscsid, then drive targetcli and iscsiadm as an
# administrator would.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/dbus /var/lib/cachelun /etc/target
# t, pass, fail, vm_diag and the watchdog (dumps daemon logs, blocked tasks,
# iSCSI session states and dmesg before qemu's hard timeout) come from the
# harness.
. /etc/vm-diag.sh
VM_LOGS="/run/cachelun*.log"
VM_DIAG_CMD='echo "---- iscsiadm -m session -P 3"; timeout 10 iscsiadm -m session -P 3 2>&1 | head -n 80'
vm_watchdog_start
finish() {
  t finish
  if vm_failed; then vm_diag "failed steps"; else
    for f in /run/cachelun*.log; do echo "---- daemon log $f"; grep -v "MAP_SYNC\|non-DAX" $f | tail -n 25; done
    echo "---- dmesg"; dmesg | grep -iE "tcmu|target|iscsi|uio|scsi|error|ext4" | tail -n 30
  fi
  echo "@@DONE"; sync; echo o > /proc/sysrq-trigger; sleep 30
}
DPID=
start_daemon() { # $1: log file
  cachelun serve --config /etc/cachelun.toml > $1 2>&1 &
  DPID=$!; echo $DPID > /tmp/vm-daemon.pid
  for i in $(seq 1 300); do
    grep -q "cachelun ready" $1 && return 0
    kill -0 $DPID 2>/dev/null || break
    sleep 0.1
  done
  fail daemon-start "not ready: $(cat $1)"; finish
}
# bounded SECS NAME CMD...: runs CMD; if it has not ended after SECS seconds
# (an umount waiting on I/O that never completes), the step fails, the
# daemon dumps its goroutines and the guest prints its diagnostics while CMD
# is still stuck.
bounded() {
  local secs=$1 name=$2; shift 2
  "$@" & local p=$!
  for i in $(seq 1 $((secs*10))); do
    kill -0 $p 2>/dev/null || { wait $p; return; }
    sleep 0.1
  done
  fail $name "still running after ${secs}s: $*"
  # The daemon's goroutines show what it waits for (it ends with them).
  kill -QUIT $DPID 2>/dev/null && sleep 2
  finish
}
# fs_roundtrip DEV NAME: mkfs.ext4, mount, write files, sync, unmount,
# remount, verify checksums (PASS lines prefixed with NAME)
fs_roundtrip() {
  local dev=$1 n=$2 m=/mnt/$2
  mkfs.ext4 -q -F $dev && pass $n-mkfs || fail $n-mkfs
  mkdir -p $m && mount $dev $m && pass $n-mount || { fail $n-mount; finish; }
  dd if=/dev/urandom of=$m/a bs=1M count=12 status=none
  dd if=/dev/urandom of=$m/b bs=4k count=300 status=none
  mkdir -p $m/dir; for i in $(seq 1 50); do echo "file $i" > $m/dir/f$i; done
  (cd $m && find . -type f | sort | xargs md5sum) > /tmp/$n.sums
  sync
  umount $m && pass $n-umount || fail $n-umount
  echo 3 > /proc/sys/vm/drop_caches
  mount $dev $m && (cd $m && md5sum -c --quiet /tmp/$n.sums) && pass $n-remount-verify "$(wc -l < /tmp/$n.sums) files" || fail $n-remount-verify "checksums differ after remount"
}
# wait_disk MODEL-OR-VENDOR TARGET-IQN: the sd device of the iSCSI session to IQN
wait_disk() {
  local iqn=$1 d s
  for i in $(seq 1 100); do
    for s in /sys/class/iscsi_session/session*; do
      [ "$(cat $s/targetname 2>/dev/null)" = "$iqn" ] || continue
      for d in $s/device/target*/*/block/*; do [ -e "$d" ] && echo /dev/${d##*/} && return 0; done
    done
    sleep 0.1
  done
  return 1
}
# wait_lun TARGET-IQN LUN: the sd device of LUN in the iSCSI session to IQN
wait_lun() {
  local iqn=$1 lun=$2 d s
  for i in $(seq 1 100); do
    for s in /sys/class/iscsi_session/session*; do
      [ "$(cat $s/targetname 2>/dev/null)" = "$iqn" ] || continue
      for d in $s/device/target*/*:$lun/block/*; do [ -e "$d" ] && echo /dev/${d##*/} && return 0; done
    done
    sleep 0.1
  done
  return 1
}
t rootfs-init
for m in configfs target_core_mod target_core_user iscsi_target_mod iscsi_tcp sd_mod; do modprobe $m || fail "modprobe-$m"; done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
ip link set lo up
t modules-loaded

dbus-daemon --system --fork || fail dbus "dbus-daemon did not start"
start_daemon /run/cachelun1.log
grep -q "dbus=true" /run/cachelun1.log && grep -q "TCMU front end ready" /run/cachelun1.log && pass daemon-dbus || { fail daemon-dbus "$(cat /run/cachelun1.log)"; finish; }
iscsid || fail iscsid
t daemons-started

# ---- LIO: targetcli, backstore user:cachelun, LIO's iSCSI target on 127.0.0.1:3260
IQN=iqn.2003-01.org.example.cachelun:tcmu
targetcli ls /backstores > /tmp/ls.txt 2>&1
grep -q "user:cachelun" /tmp/ls.txt && pass targetcli-lists "user:cachelun" || { fail targetcli-lists "$(cat /tmp/ls.txt)"; finish; }
targetcli /backstores/user:cachelun create name=nosuch size=64M cfgstring=missingvol > /tmp/bad.txt 2>&1
grep -qi "missingvol" /tmp/bad.txt && ! [ -d /sys/kernel/config/target/core/user_*/nosuch ] && pass checkconfig-refuses "$(tr '\n' ' ' < /tmp/bad.txt)" || fail checkconfig-refuses "$(cat /tmp/bad.txt)"
targetcli /backstores/user:cachelun create name=lun0 size=128M cfgstring=lun0 wwn=0123456789abcdef > /tmp/c.txt 2>&1 && pass backstore-create || { fail backstore-create "$(cat /tmp/c.txt)"; finish; }
# One targetcli session for the rest (Python start-up dominates under emulation).
targetcli > /tmp/cfg.txt 2>&1 <<EOT
/iscsi create $IQN
/iscsi/$IQN/tpg1/portals delete 0.0.0.0 3260
/iscsi/$IQN/tpg1/portals create 127.0.0.1 3260
/iscsi/$IQN/tpg1/luns create /backstores/user:cachelun/lun0
/iscsi/$IQN/tpg1 set attribute authentication=0 demo_mode_write_protect=0 generate_node_acls=1 cache_dynamic_acls=1
exit
EOT
grep -qi "error" /tmp/cfg.txt && fail iscsi-export "$(cat /tmp/cfg.txt)" || pass iscsi-export
t target-configured

iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 > /tmp/disc.txt 2>&1
grep -q "$IQN" /tmp/disc.txt && pass discovery || { fail discovery "$(cat /tmp/disc.txt)"; finish; }
iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --login > /tmp/login.txt 2>&1 && pass login || { fail login "$(cat /tmp/login.txt)"; finish; }
DEV=$(wait_disk $IQN)
[ -b "$DEV" ] && pass iscsi-disk "$DEV $(cat /sys/block/${DEV#/dev/}/device/model) $(cat /sys/block/${DEV#/dev/}/size) sectors" || { fail iscsi-disk "no disk"; finish; }
t iscsi-logged-in
fs_roundtrip $DEV lio
umount /mnt/lio
t lio-fs-done
iscsiadm -m node -T $IQN -p 127.0.0.1:3260 --logout > /dev/null 2>&1 && pass logout || fail logout
iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -o delete > /dev/null 2>&1
targetcli clearconfig confirm=True > /tmp/clear.txt 2>&1 && pass clearconfig || fail clearconfig "$(cat /tmp/clear.txt)"
grep -q "tcmu: device removed" /run/cachelun1.log && pass tcmu-removed || fail tcmu-removed "no REMOVED_DEVICE in the daemon log"
t lio-teardown-done

# ---- cachelun's own iSCSI target on 127.0.0.1:3261 (open-iscsi against it)
OWN=iqn.2026-11.io.cachelun:vm
iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3261 > /tmp/disc2.txt 2>&1
grep -q "$OWN" /tmp/disc2.txt && pass own-discovery "$(tr '\n' ' ' < /tmp/disc2.txt)" || { fail own-discovery "$(cat /tmp/disc2.txt)"; finish; }
iscsiadm -m node -T $OWN -p 127.0.0.1:3261 --login > /tmp/login2.txt 2>&1 && pass own-login || { fail own-login "$(cat /tmp/login2.txt)"; finish; }
ODEV=$(wait_disk $OWN)
[ -b "$ODEV" ] && pass own-disk "$ODEV $(cat /sys/block/${ODEV#/dev/}/device/model) $(cat /sys/block/${ODEV#/dev/}/size) sectors" || { fail own-disk "no disk"; finish; }
t own-logged-in
fs_roundtrip $ODEV own
t own-fs-done

# ---- daemon restart while logged in and mounted, with a writer running
dmesg -c > /dev/null
dd if=/dev/urandom of=/tmp/during bs=256k count=1 status=none
mkdir -p /mnt/own/w
# the writer: 256 KiB files, each fsync'd, before, during and after the restart
( i=0; while [ ! -e /tmp/stopw ]; do
    dd if=/tmp/during of=/mnt/own/w/$i bs=256k conv=fsync status=none || { echo "file $i" > /tmp/during.err; exit 1; }
    echo $i > /tmp/wcount; i=$((i+1))
  done ) &
W=$!
for i in $(seq 1 100); do [ -e /mnt/own/w/3 ] && break; sleep 0.05; done
kill -TERM $DPID; wait $DPID; rc=$?
before=$(cat /tmp/wcount)
[ $rc = 0 ] && grep -q "msg=stopped" /run/cachelun1.log && pass own-daemon-stopped "SIGTERM, exit 0, $before files written" || fail own-daemon-stopped "exit status $rc"
t daemon-stopped
start_daemon /run/cachelun2.log
t daemon-restarted
for i in $(seq 1 300); do grep -q "session logged in.*target=$OWN" /run/cachelun2.log && break; sleep 0.1; done
grep -q "session logged in.*target=$OWN" /run/cachelun2.log && pass own-relogin "$(grep 'session logged in' /run/cachelun2.log | head -n 1)" || fail own-relogin "open-iscsi did not log in to the restarted daemon"
w0=$(cat /tmp/wcount); for i in $(seq 1 100); do [ $(cat /tmp/wcount) -ge $((w0+5)) ] && break; sleep 0.1; done
touch /tmp/stopw
if wait $W; then pass own-io-across-restart "files 0..$(cat /tmp/wcount) written with fsync, $before before the stop"; else fail own-io-across-restart "writer failed: $(cat /tmp/during.err)"; fi
n=$(cat /tmp/wcount); badw=
for i in $(seq 0 $n); do cmp -s /tmp/during /mnt/own/w/$i || badw="$badw $i"; done
[ -z "$badw" ] || fail own-writer-files "files differ:$badw"
for i in $(seq 1 20); do echo "after restart $i" > /mnt/own/dir/after$i; done
sync
state=$(iscsiadm -m session -P 3 2>/dev/null | grep -A30 "$OWN" | grep -m1 "iSCSI Session State" | sed 's/.*: //')
[ "$state" = "LOGGED_IN" ] && pass own-reconnected "session $state" || fail own-reconnected "session state '$state'"
(cd /mnt/own && md5sum -c --quiet /tmp/own.sums) && [ -z "$badw" ] && pass own-verify-after-restart || fail own-verify-after-restart "files differ after the restart"
(cd /mnt/own && find . -type f | sort | xargs md5sum) > /tmp/own2.sums
umount /mnt/own && pass own-umount2 || fail own-umount2
echo 3 > /proc/sys/vm/drop_caches
mount $ODEV /mnt/own && (cd /mnt/own && md5sum -c --quiet /tmp/own2.sums) && pass own-remount-verify2 "$(wc -l < /tmp/own2.sums) files" || fail own-remount-verify2 "checksums differ after remount"

# ---- the daemon crashes (SIGKILL) while the mounted filesystem is being
# written: every file whose fsync returned must be intact after the restart
# (writes the killed daemon acknowledged come back from its intent log), and
# the filesystem must be clean
rm -f /tmp/stopw /tmp/during.err; mkdir -p /mnt/own/k
( i=0; while [ ! -e /tmp/stopw ]; do
    dd if=/tmp/during of=/mnt/own/k/$i bs=256k conv=fsync status=none || { echo "file $i" > /tmp/during.err; exit 1; }
    echo $i > /tmp/kcount; i=$((i+1))
  done ) &
W=$!
for i in $(seq 1 100); do [ -e /mnt/own/k/3 ] && break; sleep 0.05; done
kill -KILL $DPID; wait $DPID 2>/dev/null
t daemon-killed
start_daemon /run/cachelun3.log
for i in $(seq 1 300); do grep -q "session logged in.*target=$OWN" /run/cachelun3.log && break; sleep 0.1; done
grep -q "session logged in.*target=$OWN" /run/cachelun3.log && pass own-relogin-after-kill || fail own-relogin-after-kill "open-iscsi did not log in to the restarted daemon"
k0=$(cat /tmp/kcount); for i in $(seq 1 100); do [ $(cat /tmp/kcount) -ge $((k0+5)) ] && break; sleep 0.1; done
touch /tmp/stopw
if wait $W; then pass own-io-across-kill "files 0..$(cat /tmp/kcount) written with fsync, $k0 by the time of the kill"; else fail own-io-across-kill "writer failed: $(cat /tmp/during.err)"; fi
n=$(cat /tmp/kcount); badk=
for i in $(seq 0 $n); do cmp -s /tmp/during /mnt/own/k/$i || badk="$badk $i"; done
[ -z "$badk" ] && pass own-files-after-kill "$((n+1)) files intact" || fail own-files-after-kill "files differ:$badk"
rec=$(grep 'recovered acknowledged writes' /run/cachelun3.log | grep -o 'keys=[0-9]*')
t umount-after-kill
bounded 90 own-umount-after-kill umount /mnt/own
t fsck-after-kill
bounded 90 own-fsck-after-kill sh -c "e2fsck -fn $ODEV > /tmp/fsck.txt 2>&1" && pass own-fsck-after-kill "clean; ${rec:-no} unjournaled keys recovered" || fail own-fsck-after-kill "$(tail -n 5 /tmp/fsck.txt)"
errs=$(dmesg | grep -iE "I/O error|EXT4-fs error|Buffer I/O|blk_update_request|critical medium" | head -n 5)
[ -z "$errs" ] && pass own-no-io-errors "$(dmesg | grep -iE 'connection|session' | tr '\n' '|' | tail -c 600)" || fail own-no-io-errors "$errs"
t own-restart-done
# ---- EXTENDED COPY from the guest: sg_xcopy (sg3-utils) within a LUN and
# between two LUNs of the daemon (xc0, xc1 on cache c1, which writes back
# only when drained). The source range holds pattern A, written back to
# xc0's backing file, then pattern B, dirty in the cache only.
XIQN=iqn.2026-11.io.cachelun:xcopy
ADM="--socket /var/lib/cachelun/admin.sock"
echo "cachelun-vm: xcopy begins" > /dev/kmsg
t xcopy-begin
bounded 60 xcopy-login sh -c "iscsiadm -m node -T $XIQN -p 127.0.0.1:3261 --login > /tmp/xlogin.txt 2>&1" && pass xcopy-login || { fail xcopy-login "$(cat /tmp/xlogin.txt)"; finish; }
X0=$(wait_lun $XIQN 0); X1=$(wait_lun $XIQN 1)
[ -b "$X0" ] && [ -b "$X1" ] && pass xcopy-disks "xc0 $X0, xc1 $X1, $(cat /sys/block/${X1#/dev/}/size) sectors each" || { fail xcopy-disks "LUN 0 '$X0', LUN 1 '$X1'"; finish; }
# sg_xcopy reaches the disks' SCSI devices through /dev/block/MAJ:MIN, which
# udev would make
mkdir -p /dev/block; for d in $X0 $X1; do ln -sf $d /dev/block/$(cat /sys/block/${d#/dev/}/dev); done
timeout 20 sg_inq $X0 > /tmp/xinq.txt 2>&1; timeout 20 sg_vpd -p tpc $X0 > /tmp/xvpd.txt 2>&1; rc=$?
grep -q "3PC=1" /tmp/xinq.txt && [ $rc = 0 ] && grep -qi "Extended copy" /tmp/xvpd.txt && pass xcopy-3pc "$(grep -o '3PC=1' /tmp/xinq.txt), VPD 8Fh: $(grep -ci descriptor /tmp/xvpd.txt) descriptors" || fail xcopy-3pc "$(cat /tmp/xinq.txt /tmp/xvpd.txt | tail -n 20)"
MB=1048576; XN=$(cat /sys/block/${X1#/dev/}/size)
dd if=/dev/urandom of=/tmp/xa bs=1M count=1 status=none; dd if=/dev/urandom of=/tmp/xb bs=1M count=1 status=none
cat /tmp/xa /tmp/xb > /tmp/xab
dd if=/tmp/xa of=$X0 bs=1M oflag=direct status=none || fail xcopy-patterns "write A"
bounded 60 xcopy-drain sh -c "cachelun volume drain xc0 $ADM > /tmp/xdrain.txt 2>&1" || fail xcopy-drain "$(cat /tmp/xdrain.txt)"
dd if=/tmp/xb of=$X0 bs=1M seek=1 oflag=direct status=none || fail xcopy-patterns "write B"
# A is in xc0's backing file, B is not (dirty in the cache only)
cmp -s -n $MB /tmp/xa /var/lib/cachelun/xc0.img && ! cmp -s -n $MB -i 0:$MB /tmp/xb /var/lib/cachelun/xc0.img \
  && pass xcopy-patterns "A (1 MiB at LBA 0) written back, B (1 MiB at LBA 2048) dirty in the cache only" \
  || fail xcopy-patterns "backing file: A written back? B not? $(cat /tmp/xdrain.txt)"
# xcopy NAME IF SKIP OF SEEK COUNT: sg_xcopy, 512-byte blocks, bounded;
# its status in $xrc, its output in /tmp/NAME.txt
xcopy() {
  bounded 120 $1 sh -c "sg_xcopy if=$2 skip=$3 of=$4 seek=$5 bs=512 count=$6 > /tmp/$1.txt 2>&1"; xrc=$?
}
# within xc0: A and B (LBA 0..4095) to LBA 8192
t xcopy-within
xcopy xcopy-within $X0 0 $X0 8192 4096
dd if=$X0 iflag=direct,skip_bytes,count_bytes bs=1M skip=$((8192*512)) count=$((4096*512)) status=none > /tmp/xgot1
[ $xrc = 0 ] && grep -q "sg_xcopy: 4096 blocks" /tmp/xcopy-within.txt && cmp -s /tmp/xgot1 /tmp/xab \
  && pass xcopy-within "$(tr '\n' ' ' < /tmp/xcopy-within.txt)" \
  || fail xcopy-within "exit $xrc: $(cat /tmp/xcopy-within.txt); data $(cmp /tmp/xgot1 /tmp/xab 2>&1)"
# xc0 to xc1, unaligned, across the A/B boundary: LBA 1000..3499 to LBA 3..2502;
# the blocks around it stay zero
t xcopy-between
xcopy xcopy-between $X0 1000 $X1 3 2500
{ head -c $((3*512)) /dev/zero; dd if=/tmp/xab bs=512 skip=1000 count=2500 status=none; head -c $((593*512)) /dev/zero; } > /tmp/xexp2
dd if=$X1 iflag=direct,count_bytes bs=1M count=$((3096*512)) status=none > /tmp/xgot2
[ $xrc = 0 ] && grep -q "sg_xcopy: 2500 blocks" /tmp/xcopy-between.txt && cmp -s /tmp/xgot2 /tmp/xexp2 \
  && pass xcopy-between "$(tr '\n' ' ' < /tmp/xcopy-between.txt)" \
  || fail xcopy-between "exit $xrc: $(cat /tmp/xcopy-between.txt); data $(cmp /tmp/xgot2 /tmp/xexp2 2>&1)"
# past the end of xc1 (the last 8 blocks plus 8 more): refused by the
# target (sg_xcopy's own checks let it through), nothing written (xc1's
# last MiB and its copied range read back as before)
t xcopy-past-end
x1sum=$(dd if=$X1 iflag=direct bs=1M skip=$((XN/2048-1)) status=none | md5sum)
xcopy xcopy-past-end $X0 0 $X1 $((XN-8)) 16
x1after=$(dd if=$X1 iflag=direct bs=1M skip=$((XN/2048-1)) status=none | md5sum)
dd if=$X1 iflag=direct,count_bytes bs=1M count=$((3096*512)) status=none > /tmp/xgot3
[ $xrc != 0 ] && grep -q "failed with error" /tmp/xcopy-past-end.txt && [ "$x1sum" = "$x1after" ] && cmp -s /tmp/xgot3 /tmp/xexp2 \
  && pass xcopy-past-end "exit $xrc, xc1 unchanged: $(tr '\n' ' ' < /tmp/xcopy-past-end.txt)" \
  || fail xcopy-past-end "exit $xrc, xc1 ${x1sum%% *} -> ${x1after%% *}: $(cat /tmp/xcopy-past-end.txt)"
# the copies reach each destination's own backing file when drained
t xcopy-drain
bounded 60 xcopy-drain2 sh -c "(cachelun volume drain xc0 $ADM && cachelun volume drain xc1 $ADM) > /tmp/xdrain2.txt 2>&1"
cmp -s -i $((8192*512)):0 -n $((2*MB)) /var/lib/cachelun/xc0.img /tmp/xab && cmp -s -n $((3096*512)) /var/lib/cachelun/xc1.img /tmp/xexp2 \
  && pass xcopy-written-back "xc0.img and xc1.img hold the copies" || fail xcopy-written-back "$(cat /tmp/xdrain2.txt)"
errs=$(dmesg | sed -n '/cachelun-vm: xcopy begins/,$p' | grep -iE "I/O error|Buffer I/O|blk_update_request|critical medium|conn error|timing out|host reset|bus reset|Abort" | head -n 5)
[ -z "$errs" ] && pass xcopy-no-io-errors || fail xcopy-no-io-errors "$errs"
iscsiadm -m node -T $XIQN -p 127.0.0.1:3261 --logout > /dev/null 2>&1 && pass xcopy-logout || fail xcopy-logout
t xcopy-done
iscsiadm -m node -T $OWN -p 127.0.0.1:3261 --logout > /dev/null 2>&1 && pass own-logout || fail own-logout
kill -TERM $DPID; wait $DPID && pass own-clean-stop || fail own-clean-stop
t teardown-done
finish

#!/bin/sh
# /init of the tier-1 guest (busybox initramfs). Paths are inside the guest.
# Runs the real daemon (cachelun serve, [tcmu] enabled, no D-Bus) over a
# cache file and backing files on tmpfs, drives LIO through raw configfs
# writes (the sequence rtslib/targetcli use), exposes the TCMU device through
# tcm_loop as a local SCSI disk, and checks data across daemon crashes.
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /tmp
# t, pass, fail, vm_diag and the watchdog (dumps daemon logs, blocked tasks
# and dmesg before qemu's hard timeout) come from the harness.
. /etc/vm-diag.sh
VM_LOGS="/tmp/d*.log"
vm_watchdog_start
now() { cut -d' ' -f1 /proc/uptime; }
finish() {
  t finish
  if vm_failed; then vm_diag "failed steps"; else
    echo "---- daemon logs"; for f in /tmp/d*.log; do echo "== $f"; grep -v "MAP_SYNC\|non-DAX" $f | tail -n 30; done
    echo "---- dmesg"; dmesg | grep -iE "tcmu|target|uio|loop|error" | tail -n 20
  fi
  echo "@@DONE"; sync; poweroff -f; sleep 30
}
t init
for m in configfs target_core_mod target_core_user tcm_loop sd_mod uio; do modprobe $m || fail modprobe-$m; done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
t modules-loaded
C=/sys/kernel/config/target

DPID=
start_daemon() { # $1: log file
  cachelun serve --config /etc/cachelun.toml > $1 2>&1 &
  DPID=$!; echo $DPID > /tmp/vm-daemon.pid
  i=0; while [ $i -lt 300 ]; do
    grep -q "cachelun ready" $1 && return 0
    kill -0 $DPID 2>/dev/null || break
    sleep 0.1; i=$((i+1))
  done
  fail daemon-start "not ready, see $1"; cat $1; finish
}
start_daemon /tmp/d1.log
grep -q "TCMU front end ready" /tmp/d1.log && pass daemon-tcmu "$(grep 'TCMU front end ready' /tmp/d1.log)" || fail daemon-tcmu "no TCMU front end"
t daemon-ready

# --- create the device: what targetcli /backstores/user:cachelun create does
D=$C/core/user_0/vol1
mkdir -p $D
echo "dev_config=cachelun/vol1" > $D/control
echo "dev_size=33554432" > $D/control
s=$(now)
if echo 1 > $D/enable; then pass enable "ADDED_DEVICE answered in $(awk "BEGIN{print $(now)-$s}")s"; else fail enable "enable write failed"; finish; fi
echo "T10 VPD Unit Serial Number: 5eria1tcmu0001" > $D/wwn/vpd_unit_serial 2>/dev/null
t device-enabled

# --- tcm_loop: nexus first, then the LUN
L=$C/loopback/naa.5001405000000001/tpgt_1
mkdir -p $L
echo naa.5001405000000002 > $L/nexus
mkdir -p $L/lun/lun_0
ln -s $D $L/lun/lun_0/vol1
i=0; while [ $i -lt 200 ] && [ ! -b /dev/sda ]; do sleep 0.05; i=$((i+1)); done
[ -b /dev/sda ] && pass disk "/dev/sda: $(cat /sys/block/sda/device/vendor) $(cat /sys/block/sda/device/model) $(cat /sys/block/sda/size) sectors" || { fail disk "no /dev/sda"; finish; }
t disk-present
[ "$(cat /sys/block/sda/size)" = 65536 ] && pass capacity || fail capacity "size $(cat /sys/block/sda/size) sectors, want 65536"

# --- data written through the SCSI disk reads back; it sits in the cache
# (writeback mode, writeback held off), flushed by fsync (SYNCHRONIZE CACHE)
dd if=/dev/urandom of=/tmp/pat1 bs=1M count=8 2>/dev/null
dd if=/tmp/pat1 of=/dev/sda bs=256k oflag=direct conv=fsync 2>/dev/null || fail write1 "dd to /dev/sda failed"
dd if=/dev/sda of=/tmp/back1 bs=256k count=32 iflag=direct 2>/dev/null
a=$(md5sum < /tmp/pat1); b=$(md5sum < /tmp/back1); c=$(dd if=/tmp/cl/vol1.img bs=1M count=8 2>/dev/null | md5sum)
[ "$a" = "$b" ] && pass readback "$a" || fail readback "pattern $a device $b"
[ "$a" != "$c" ] && pass in-cache "the backing file does not hold the data yet" || fail in-cache "the backing file already holds the data: written back although writeback is held off"
t io-done

# --- daemon killed (idle) and restarted: re-adopts the device, flushed data intact
kill -9 $DPID; wait $DPID 2>/dev/null
start_daemon /tmp/d2.log
grep "re-adopted" /tmp/d2.log | grep -q "vol1" && pass readopt "$(grep re-adopted /tmp/d2.log)" || fail readopt "no re-adoption in /tmp/d2.log"
dd if=/dev/sda of=/tmp/back2 bs=256k count=32 iflag=direct 2>/dev/null
[ "$(md5sum < /tmp/back2)" = "$a" ] && pass restart-readback || fail restart-readback "data differs after restart"
t restart-idle-done

# --- daemon killed in the middle of a write stream (1 MiB chunks, each
# followed by fsync): what the ring held fails with BUSY at re-adoption, the
# initiator retries, and every chunk reads back whole
dd if=/dev/urandom of=/tmp/pat3 bs=1M count=16 2>/dev/null
rm -f /tmp/chunk.*
( i=0; while [ $i -lt 16 ]; do
    dd if=/tmp/pat3 of=/dev/sda bs=64k count=16 skip=$((i*16)) seek=$((128+i*16)) oflag=direct conv=fsync 2>>/tmp/dd3.err || exit 1
    touch /tmp/chunk.$i; i=$((i+1))
  done ) &
W=$!
i=0; while [ $i -lt 200 ] && [ ! -e /tmp/chunk.3 ]; do sleep 0.05; i=$((i+1)); done
kill -9 $DPID; wait $DPID 2>/dev/null
before=$(ls /tmp/chunk.* 2>/dev/null | wc -l)
t killed-under-io "$before chunks of 16 done"
start_daemon /tmp/d3.log
if wait $W; then pass restart-under-io-dd "writer finished; $before of 16 chunks were done at the kill"; else fail restart-under-io-dd "dd failed: $(cat /tmp/dd3.err)"; fi
# Every chunk must read back whole. Chunks whose fsync returned before the
# kill are durable; in the chunk in flight at the kill, writes the killed
# daemon acknowledged were recovered from its intent log at the restart, and
# the ones it had not acknowledged were retried by the initiator. A 64 KiB
# block holding zeros is an acknowledged write the crash lost.
zero=$(dd if=/dev/zero bs=64k count=1 2>/dev/null | md5sum)
bad=; lost=0
i=0; while [ $i -lt 16 ]; do
  x=$(dd if=/tmp/pat3 bs=64k skip=$((i*16)) count=16 2>/dev/null | md5sum)
  y=$(dd if=/dev/sda bs=64k skip=$((128+i*16)) count=16 iflag=direct 2>/dev/null | md5sum)
  if [ "$x" != "$y" ]; then
    j=0; while [ $j -lt 16 ]; do
      xb=$(dd if=/tmp/pat3 bs=64k skip=$((i*16+j)) count=1 2>/dev/null | md5sum)
      yb=$(dd if=/dev/sda bs=64k skip=$((128+i*16+j)) count=1 iflag=direct 2>/dev/null | md5sum)
      if [ "$yb" = "$zero" ]; then lost=$((lost+1)); bad="$bad $i/$j(zeros)"; elif [ "$yb" != "$xb" ]; then bad="$bad $i/$j"; fi
      j=$((j+1))
    done
  fi
  i=$((i+1))
done
grep -q "recovered acknowledged writes" /tmp/d3.log && rec="$(grep -o 'keys=[0-9]*' /tmp/d3.log | head -1) recovered from the intent log" || rec="nothing to recover from the intent log"
[ -z "$bad" ] && pass restart-under-io "16 MiB checked, every chunk whole; $rec" || fail restart-under-io "blocks differ:$bad ($lost acknowledged 64 KiB blocks lost; $before chunks were done at the kill; $rec)"
[ "$(dd if=/dev/sda bs=256k count=32 iflag=direct 2>/dev/null | md5sum)" = "$a" ] && pass restart-under-io-old || fail restart-under-io-old "earlier data damaged"
t restart-io-done

# --- a create for an unknown volume fails promptly, with the reason in the log
B=$C/core/user_0/bad
mkdir -p $B
echo "dev_config=cachelun/nosuchvol" > $B/control
echo "dev_size=1048576" > $B/control
s=$(now)
if timeout 20 sh -c "echo 1 > $B/enable" 2>/dev/null; then fail unknown-refused "enable succeeded"; else
  d=$(awk "BEGIN{print $(now)-$s}")
  awk "BEGIN{exit !($d < 5)}" && pass unknown-refused "refused in ${d}s" || fail unknown-refused "took ${d}s"
fi
grep "nosuchvol" /tmp/d3.log | grep -q "not a volume exported over TCMU" && pass unknown-reason "$(grep nosuchvol /tmp/d3.log | head -n 1)" || fail unknown-reason "reason not logged"
rmdir $B

# --- a second device for a volume already exported is refused
E=$C/core/user_0/again
mkdir -p $E
echo "dev_config=cachelun/vol1" > $E/control
echo "dev_size=1048576" > $E/control
if timeout 20 sh -c "echo 1 > $E/enable" 2>/dev/null; then fail in-use-refused "enable succeeded"; else
  grep -q "already backs a TCMU device" /tmp/d3.log && pass in-use-refused "$(grep 'already backs' /tmp/d3.log | head -n 1)" || fail in-use-refused "refused without the reason in the log"
fi
rmdir $E

# --- a device of another subtype is refused at once (nobody else would answer)
F=$C/core/user_1/other
mkdir -p $F
echo "dev_config=file//tmp/x.img" > $F/control
echo "dev_size=1048576" > $F/control
if timeout 20 sh -c "echo 1 > $F/enable" 2>/dev/null; then fail foreign-refused "enable succeeded"; else pass foreign-refused; fi
rmdir $F

# --- too large for the volume (small is 1 MiB)
G=$C/core/user_0/big
mkdir -p $G
echo "dev_config=cachelun/small" > $G/control
echo "dev_size=2097152" > $G/control
if timeout 20 sh -c "echo 1 > $G/enable" 2>/dev/null; then fail too-large-refused "enable succeeded"; else pass too-large-refused; fi
rmdir $G

# --- live reconfiguration (RECONFIG_DEVICE): size and write cache
if echo 67108864 > $D/attrib/dev_size 2>/dev/null; then fail grow-refused "grew beyond the 32 MiB volume"; else pass grow-refused; fi
if echo 16777216 > $D/attrib/dev_size; then
  echo 1 > /sys/block/sda/device/rescan; sleep 0.5
  [ "$(cat /sys/block/sda/size)" = 32768 ] && pass resize "32768 sectors after rescan" || fail resize "size $(cat /sys/block/sda/size) sectors after rescan"
else fail resize "dev_size write refused"; fi
wc0=$(cat /sys/block/sda/queue/write_cache)
if echo 0 > $D/attrib/emulate_write_cache; then
  echo 1 > /sys/block/sda/device/rescan; sleep 0.5
  wc1=$(cat /sys/block/sda/queue/write_cache)
  [ "$wc0" = "write back" ] && [ "$wc1" = "write through" ] && pass write-cache "$wc0 -> $wc1" || fail write-cache "$wc0 -> $wc1"
else fail write-cache "emulate_write_cache write refused"; fi
[ "$(dd if=/dev/sda bs=256k count=32 iflag=direct 2>/dev/null | md5sum)" = "$a" ] && pass reconfig-data || fail reconfig-data "data differs after reconfiguration"
t reconfig-done

# --- the volume grows (its backing file grew): the daemon writes dev_size
# itself; the kernel's RECONFIG_DEVICE gives the LUN the new capacity and
# CAPACITY DATA HAS CHANGED, which sd reports at the next command
echo 33554432 > $D/attrib/dev_size                 # the device shows the whole volume again
echo 1 > /sys/block/sda/device/rescan; sleep 0.5
s=$(now)
truncate -s 48M /tmp/cl/vol1.img
i=0; while [ "$(cat $D/attrib/dev_size)" != 50331648 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
if [ "$(cat $D/attrib/dev_size)" = 50331648 ]; then
  pass volume-grow "dev_size followed the volume in $(awk "BEGIN{print $(now)-$s}")s: $(grep 'backing device grew' /tmp/d3.log | head -n 1)"
else fail volume-grow "dev_size $(cat $D/attrib/dev_size) after 20 s: $(grep -i 'grew\|tcmu' /tmp/d3.log | tail -n 3)"; fi
dd if=/dev/sda of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null
dmesg | grep -q "Capacity data has changed" && pass volume-grow-ua "$(dmesg | grep 'Capacity data has changed' | tail -n 1)" || fail volume-grow-ua "sd reported no CAPACITY DATA HAS CHANGED"
echo 1 > /sys/block/sda/device/rescan; sleep 0.5
[ "$(cat /sys/block/sda/size)" = 98304 ] && pass volume-grow-disk "98304 sectors after rescan" || fail volume-grow-disk "size $(cat /sys/block/sda/size) sectors after rescan"
dd if=/dev/urandom of=/tmp/grow.pat bs=64k count=16 2>/dev/null
dd if=/tmp/grow.pat of=/dev/sda bs=64k seek=640 oflag=direct conv=fsync 2>/dev/null
[ "$(dd if=/dev/sda bs=64k skip=640 count=16 iflag=direct 2>/dev/null | md5sum)" = "$(md5sum < /tmp/grow.pat)" ] && pass volume-grow-data "1 MiB past the old end written and read back" || fail volume-grow-data "data past the old end differs"
t grow-done

# --- teardown: REMOVED_DEVICE handshake, then a clean stop (SIGTERM)
rm $L/lun/lun_0/vol1; rmdir $L/lun/lun_0
echo NULL > $L/nexus 2>/dev/null; rmdir $L; rmdir $C/loopback/naa.5001405000000001
if timeout 20 rmdir $D; then pass remove; else fail remove "rmdir failed"; fi
kill -TERM $DPID; wait $DPID; rc=$?
[ $rc = 0 ] && grep -q "msg=stopped" /tmp/d3.log && pass clean-stop || fail clean-stop "daemon exit status $rc"

finish

#!/bin/sh
# /init of the tier-3 guest (busybox initramfs, emulated NVDIMM). Paths are
# inside the guest. Boot "first" (-cpu max) switches the NVDIMM's namespace
# to fsdax through sysfs, makes an ext4 on /dev/pmem0, mounts it with
# dax=always and runs the real daemon with cache c0 there (DAX media) and
# cache c1 on a plain ext4 virtio disk (non-DAX), both volumes exposed by
# TCMU + tcm_loop as /dev/sda (c0) and /dev/sdb (c1). It checks patterns,
# a SIGKILL under write load, measures FUA writes and commits on both disks,
# inspects and checks the cache after a clean stop, then writes and flushes
# a last pattern while an unflushed writer runs and prints the power-off
# marker: the host kills qemu there. Boot "second" (-cpu max without CLWB
# and CLFLUSHOPT, same NVDIMM file) checks the cache and every flushed
# pattern after that power cut and runs the data checks again with the
# fallback flush instruction.
export PATH=/bin:/sbin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /tmp
. /etc/vm-diag.sh
VM_LOGS="/tmp/d*.log"
vm_watchdog_start
PHASE=$(sed -n 's/.*cachelun.phase=\([a-z]*\).*/\1/p' /proc/cmdline)
finish() {
  t finish
  if vm_failed; then vm_diag "failed steps"; fi
  echo "@@DONE"; sync; poweroff -f; sleep 30
}
t init "phase $PHASE"
for m in nfit nd_pmem crc32c_generic ext4 virtio_pci virtio_blk configfs target_core_mod target_core_user tcm_loop sd_mod uio; do
  modprobe $m || fail modprobe-$m
done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
t modules-loaded

# --- the NVDIMM as an fsdax block device
i=0; while [ $i -lt 100 ] && [ ! -b /dev/pmem0 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/pmem0 ] || { fail pmem "no /dev/pmem0: $(ls /sys/bus/nd/devices 2>&1 | tr '\n' ' ')"; finish; }
ND=/sys/bus/nd/devices
if [ "$PHASE" = first ]; then
  # QEMU's NVDIMM has no label area: the namespace comes up in raw mode
  # (no DAX). Without ndctl: a pfn device in "pmem" mode (struct pages on
  # the device) claims the namespace, as "ndctl create-namespace -m fsdax"
  # would; the setting is written to the NVDIMM's first bytes.
  [ "$(cat /sys/block/pmem0/queue/dax)" = 0 ] && pass pmem-raw "pmem0 $(($(cat /sys/block/pmem0/size)/2048)) MiB, dax=0 (raw namespace)" || fail pmem-raw "pmem0 came up with dax=$(cat /sys/block/pmem0/queue/dax)"
  NS=$(basename $(ls -d $ND/namespace*.0 | head -n 1)); R=${NS#namespace}; R=region${R%.*}
  PFN=$(cat $ND/$R/pfn_seed)
  echo $NS > /sys/bus/nd/drivers/nd_pmem/unbind
  cat /proc/sys/kernel/random/uuid > $ND/$PFN/uuid
  echo pmem > $ND/$PFN/mode
  echo 2097152 > $ND/$PFN/align
  echo $NS > $ND/$PFN/namespace
  echo $PFN > /sys/bus/nd/drivers/nd_pmem/bind
  i=0; while [ $i -lt 100 ] && ! [ "$(cat /sys/block/pmem0/queue/dax 2>/dev/null)" = 1 ]; do sleep 0.1; i=$((i+1)); done
  [ "$(cat /sys/block/pmem0/queue/dax 2>/dev/null)" = 1 ] && pass fsdax "$NS claimed by $PFN (mode $(cat $ND/$PFN/mode)); pmem0 $(($(cat /sys/block/pmem0/size)/2048)) MiB, dax=1" || { fail fsdax "pmem0 dax=$(cat /sys/block/pmem0/queue/dax 2>/dev/null) after the switch"; finish; }
  # e2fsprogs by path: busybox's mke2fs (first in PATH) makes no ext4.
  # 4 KiB blocks: DAX needs the page size, and mke2fs's profile gives a
  # file system this small ("small", under 512 MiB) 1 KiB blocks.
  /usr/sbin/mke2fs -t ext4 -b 4096 -q -F -L pmem /dev/pmem0 > /tmp/mke2fs.out 2>&1 && pass mkfs "e2fsprogs mke2fs on /dev/pmem0" || { fail mkfs "$(cat /tmp/mke2fs.out)"; finish; }
else
  [ "$(cat /sys/block/pmem0/queue/dax)" = 1 ] && pass fsdax-kept "pmem0 came up in fsdax by itself: $(($(cat /sys/block/pmem0/size)/2048)) MiB, dax=1" || { fail fsdax-kept "pmem0 dax=$(cat /sys/block/pmem0/queue/dax)"; finish; }
fi
mkdir -p /mnt/pmem /mnt/disk
mount -t ext4 -o dax=always /dev/pmem0 /mnt/pmem || { fail dax-mount "mount -o dax=always failed: $(dmesg | tail -n 3)"; finish; }
grep " /mnt/pmem " /proc/mounts | grep -q "dax=always" && pass dax-mount "$(grep ' /mnt/pmem ' /proc/mounts)" || fail dax-mount "$(grep ' /mnt/pmem ' /proc/mounts)"
i=0; while [ $i -lt 100 ] && [ ! -b /dev/vda ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /mnt/disk || { fail disk-mount "no ext4 on /dev/vda"; finish; }
pass disk-mount "$(grep ' /mnt/disk ' /proc/mounts) (dax=$(cat /sys/block/vda/queue/dax))"
mkdir -p /mnt/pmem/cl
ip link set lo up
t mounted

# The instruction a DAX persist must use on this CPU (what CPUID offers,
# as the kernel read it): CLWB, else CLFLUSHOPT, else CLFLUSH.
FLAGS=" $(grep -m 1 '^flags' /proc/cpuinfo | cut -d: -f2) "
case "$FLAGS" in *" clwb "*) WANT=clwb;; *" clflushopt "*) WANT=clflushopt;; *) WANT=clflush;; esac

DPID=
start_daemon() { # $1: log file
  cachelun serve --config /etc/cachelun.toml > $1 2>&1 &
  DPID=$!; echo $DPID > /tmp/vm-daemon.pid
  i=0; while [ $i -lt 600 ]; do
    grep -q "cachelun ready" $1 && return 0
    kill -0 $DPID 2>/dev/null || break
    sleep 0.1; i=$((i+1))
  done
  fail daemon-start "not ready, see $1"; finish
}
C=/sys/kernel/config/target
L=$C/loopback/naa.5001405000000001/tpgt_1
add_disk() { # $1 volume, $2 LUN, $3 disk name
  D=$C/core/user_0/$1
  mkdir -p $D
  echo "dev_config=cachelun/$1" > $D/control
  echo "dev_size=33554432" > $D/control
  echo 1 > $D/enable || { fail enable-$1 "enable failed"; finish; }
  mkdir -p $L; [ -n "$(cat $L/nexus 2>/dev/null)" ] || echo naa.5001405000000002 > $L/nexus
  mkdir -p $L/lun/lun_$2
  ln -s $D $L/lun/lun_$2/$1
  i=0; while [ $i -lt 200 ] && [ ! -b /dev/$3 ]; do sleep 0.05; i=$((i+1)); done
  [ -b /dev/$3 ] || { fail disk-$1 "no /dev/$3"; finish; }
}
add_disks() { add_disk vol1 0 sda; add_disk vol2 1 sdb; }
remove_disks() {
  for v in vol1:0 vol2:1; do
    rm $L/lun/lun_${v#*:}/${v%:*}; rmdir $L/lun/lun_${v#*:}
  done
  echo NULL > $L/nexus 2>/dev/null; rmdir $L; rmdir $C/loopback/naa.5001405000000001
  for v in vol1 vol2; do timeout 20 rmdir $C/core/user_0/$v || fail remove "rmdir $v failed"; done
  i=0; while [ $i -lt 100 ] && [ -b /dev/sda ]; do sleep 0.05; i=$((i+1)); done
}
stop_daemon() { # $1 step name
  kill -TERM $DPID; wait $DPID; rc=$?
  [ $rc = 0 ] && pass $1 || fail $1 "daemon exit status $rc"
}
# media_line LOG: the cache media line of c0, and checks its instruction.
media_checks() { # $1 log, $2 step suffix
  line=$(grep "cache media: DAX mapping" $1 | grep "/mnt/pmem/cl/cache.img" | head -n 1)
  got=$(echo "$line" | sed -n 's/.* flush=\([a-z]*\).*/\1/p')
  [ -n "$line" ] && pass media-dax$2 "$line" || fail media-dax$2 "c0 is not on DAX media: $(grep 'cache media' $1 | tr '\n' ' ')"
  [ "$got" = "$WANT" ] && pass flush-instruction$2 "flush=$got; the CPU offers:$(echo "$FLAGS" | tr ' ' '\n' | grep -E '^(clwb|clflushopt|clflush)$' | tr '\n' ' ')" || fail flush-instruction$2 "flush=$got, want $WANT for this CPU"
  line=$(grep "cache media: non-DAX file" $1 | grep "/mnt/disk/cache1.img" | head -n 1)
  [ -n "$line" ] && pass media-nondax$2 "$line" || fail media-nondax$2 "c1: $(grep 'cache media' $1 | tr '\n' ' ')"
  grep "cache open" $1 | grep "/mnt/pmem/cl/cache.img" | grep -q "flush=$WANT" || fail cache-open$2 "no cache open line with flush=$WANT"
}
# offline_checks SUFFIX: inspect says DAX and the instruction; check is clean.
offline_checks() {
  cachelun inspect /mnt/pmem/cl/cache.img > /tmp/inspect.out 2>&1; rc=$?
  m=$(grep '^media:' /tmp/inspect.out)
  [ $rc = 0 ] && echo "$m" | grep -q "dax (MAP_SYNC, persist $WANT+sfence)" && pass inspect-dax$1 "$m" || fail inspect-dax$1 "exit $rc: $(head -n 3 /tmp/inspect.out)"
  cachelun check /mnt/pmem/cl/cache.img > /tmp/check.out 2>&1; rc=$?
  [ $rc = 0 ] && pass check-clean$1 "$(tail -n 1 /tmp/check.out)" || fail check-clean$1 "exit $rc: $(tail -n 5 /tmp/check.out)"
}
# region_is PATFILE OFFSET_MIB: /dev/sda holds PATFILE at OFFSET_MIB.
region_is() {
  n=$(($(wc -c < $1)/65536))
  [ "$(dd if=/dev/sda bs=64k skip=$(($2*16)) count=$n iflag=direct 2>/dev/null | md5sum)" = "$(md5sum < $1)" ]
}
zero=$(dd if=/dev/zero bs=64k count=1 2>/dev/null | md5sum)
# kill_under_io PATFILE SUFFIX: 1 MiB chunks of PATFILE written to /dev/sda
# at 8 MiB, each followed by fsync; the daemon is SIGKILLed after the third
# and restarted; every chunk must read back whole (what the killed daemon
# acknowledged is recovered from its intent log, the rest retried).
kill_under_io() {
  nchunks=$(($(wc -c < $1)/1048576))
  rm -f /tmp/chunk.*
  ( i=0; while [ $i -lt $nchunks ]; do
      dd if=$1 of=/dev/sda bs=64k count=16 skip=$((i*16)) seek=$((128+i*16)) oflag=direct conv=fsync 2>>/tmp/dd3.err || exit 1
      touch /tmp/chunk.$i; i=$((i+1))
    done ) &
  W=$!
  i=0; while [ $i -lt 400 ] && [ ! -e /tmp/chunk.2 ]; do sleep 0.05; i=$((i+1)); done
  kill -9 $DPID; wait $DPID 2>/dev/null
  before=$(ls /tmp/chunk.* 2>/dev/null | wc -l)
  t killed-under-io "$before chunks of $nchunks done"
  start_daemon /tmp/d-restart$2.log
  wait $W || fail restart-under-io-dd$2 "dd failed: $(cat /tmp/dd3.err)"
  bad=; c=0
  while [ $c -lt $nchunks ]; do
    x=$(dd if=$1 bs=64k skip=$((c*16)) count=16 2>/dev/null | md5sum)
    y=$(dd if=/dev/sda bs=64k skip=$((128+c*16)) count=16 iflag=direct 2>/dev/null | md5sum)
    if [ "$x" != "$y" ]; then # which 64 KiB blocks, and are they zeros (lost)?
      i=$((c*16)); while [ $i -lt $((c*16+16)) ]; do
        x=$(dd if=$1 bs=64k skip=$i count=1 2>/dev/null | md5sum)
        y=$(dd if=/dev/sda bs=64k skip=$((128+i)) count=1 iflag=direct 2>/dev/null | md5sum)
        if [ "$y" = "$zero" ]; then bad="$bad $i(zeros)"; elif [ "$x" != "$y" ]; then bad="$bad $i"; fi
        i=$((i+1))
      done
    fi
    c=$((c+1))
  done
  [ -z "$bad" ] && pass restart-under-io$2 "$nchunks MiB checked, every 64 KiB block whole; $before chunks were done at the kill" || fail restart-under-io$2 "64 KiB blocks differ:$bad ($before chunks were done at the kill)"
  # The restarted daemon found the written data dirty on the DAX media:
  # the checks above read it from there, not from the backing file.
  line=$(grep -E "cache (replayed|recovered after a crash)" /tmp/d-restart$2.log | grep "cache=c0")
  echo "$line" | grep -q "dirty_bytes=[1-9]" && pass replayed-from-dax$2 "$line" || fail replayed-from-dax$2 "no dirty data replayed from the DAX cache: $line"
}

if [ "$PHASE" = first ]; then
  start_daemon /tmp/d1.log
  media_checks /tmp/d1.log ""
  add_disks
  pass disks "sda $(cat /sys/block/sda/size) sectors (vol1, DAX cache), sdb $(cat /sys/block/sdb/size) sectors (vol2, non-DAX cache)"
  t disks
  # patterns through the DAX cache, flushed by fsync (SYNCHRONIZE CACHE)
  dd if=/etc/pat1 of=/dev/sda bs=256k oflag=direct conv=fsync 2>/dev/null || fail write1 "dd to /dev/sda failed"
  region_is /etc/pat1 0 && pass readback "4 MiB pattern at 0 reads back" || fail readback "pattern at 0 differs"
  kill_under_io /etc/pat3 ""
  region_is /etc/pat1 0 && pass restart-old "the 4 MiB pattern at 0 is intact after the kill" || fail restart-old "pattern at 0 damaged by the kill"
  t data-done
  # The same workload on both disks, in alternating rounds so that a change
  # of the host's load hits both alike (emulated: only the ratio means
  # anything). The daemon's own view of the flushes (SYNCHRONIZE CACHE, as
  # the SCSI device server timed them) comes from its /metrics.
  flushstat() { # $1 volume: "sum_seconds count" of its flush operations
    wget -q -O - http://127.0.0.1:9420/metrics | awk -v v="volume=\"$1\"" '
      /^cachelun_volume_op_duration_seconds_(sum|count)\{/ && index($1, v) && index($1, "op=\"flush\"") {
        if ($1 ~ /_sum/) s = $2; else c = $2 }
      END { print s + 0, c + 0 }'
  }
  f1=$(flushstat vol1); f2=$(flushstat vol2)
  for r in 1 2 3; do
    for d in sda:dax sdb:nondax; do
      dev=${d%:*}
      out=$(fuabench -dev /dev/$dev -offset $((26<<20)) -span $((4<<20)) -seconds 1 2>&1) && pass bench-${d#*:} "round=$r $out queue_fua=$(cat /sys/block/$dev/queue/fua) write_cache=$(cat /sys/block/$dev/queue/write_cache | tr ' ' _)" || fail bench-${d#*:} "$out"
    done
  done
  bench_flush() { # $1 volume, $2 kind, $3 $4 sum and count before the rounds
    set -- $1 $2 $3 $4 $(flushstat $1)
    n=$(awk "BEGIN{print $6 - $4}")
    [ "$n" -gt 0 ] && pass daemon-flush-$2 "flushes=$n flush_mean_us=$(awk "BEGIN{printf \"%d\", ($5 - $3) * 1e6 / ($6 - $4)}")" || fail daemon-flush-$2 "no flush in the daemon's metrics for $1 (before: $3 $4, after: $5 $6)"
  }
  bench_flush vol1 dax $f1
  bench_flush vol2 nondax $f2
  t bench-done
  remove_disks
  stop_daemon clean-stop
  offline_checks ""
  t offline-done
  # The power cut: an unflushed writer runs at 30 MiB while a last pattern
  # is written at 20 MiB and flushed; then the host kills qemu.
  start_daemon /tmp/d4.log
  add_disks
  ( while :; do dd if=/dev/urandom of=/dev/sda bs=64k count=32 seek=480 oflag=direct 2>/dev/null; done ) &
  dd if=/etc/pat4 of=/dev/sda bs=64k seek=320 oflag=direct conv=fsync 2>/dev/null || fail write4 "dd failed"
  region_is /etc/pat4 20 && pass flushed-before-poweroff "4 MiB at 20 MiB written, flushed and read back; an unflushed writer is running" || fail flushed-before-poweroff "pattern at 20 MiB differs"
  t poweroff
  if vm_failed; then finish; fi
  echo "@@DONE"
  echo "@@POWEROFF"
  sleep 60
  fail poweroff "the host did not cut the power"
  finish
fi

# --- second boot, after the power cut, on a CPU without CLWB or CLFLUSHOPT
offline_checks "-after-poweroff"
start_daemon /tmp/d1.log
media_checks /tmp/d1.log "-fallback"
# What the first boot flushed last was still dirty in the DAX cache at the
# power cut (writeback is held off): the reads below come from there.
line=$(grep -E "cache (replayed|recovered after a crash)" /tmp/d1.log | grep "cache=c0")
echo "$line" | grep -q "dirty_bytes=[1-9]" && pass replayed-after-poweroff "$line" || fail replayed-after-poweroff "no dirty data replayed from the DAX cache: $line"
add_disks
t disks
bad=
region_is /etc/pat1 0 || bad="$bad pat1@0"
region_is /etc/pat3 8 || bad="$bad pat3@8"
region_is /etc/pat4 20 || bad="$bad pat4@20"
[ -z "$bad" ] && pass poweroff-flushed-intact "every flushed pattern of the first boot reads back (4 MiB at 0, 8 MiB at 8, 4 MiB at 20)" || fail poweroff-flushed-intact "lost or damaged:$bad"
dd if=/dev/urandom of=/tmp/pat5 bs=1M count=8 2>/dev/null
kill_under_io /tmp/pat5 "-fallback"
dd if=/dev/urandom of=/tmp/pat6 bs=1M count=4 2>/dev/null
dd if=/tmp/pat6 of=/dev/sda bs=64k seek=320 oflag=direct conv=fsync 2>/dev/null
region_is /tmp/pat6 20 && pass readback-fallback "4 MiB written and read back with the fallback flush" || fail readback-fallback "pattern at 20 MiB differs"
t data-done
remove_disks
stop_daemon clean-stop-fallback
offline_checks "-fallback"
finish

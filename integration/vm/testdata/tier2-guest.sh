#!/bin/bash
# PID 1 of the tier-2 Debian guest (after switch_root). Paths are inside the
# guest. No systemd: start only the system bus, the TCMU daemon and iscsid,
# then drive targetcli and iscsiadm as an administrator would.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/dbus /var/lib/cachelun /etc/target
t() { echo "@@T $(cut -d' ' -f1 /proc/uptime) $*"; }
pass() { echo "@@PASS $*"; }
fail() { echo "@@FAIL $*"; }
finish() {
  t finish
  echo "---- daemon log"; tail -n 30 /run/tcmud.log
  echo "---- dmesg"; dmesg | grep -iE "tcmu|target|iscsi|uio|scsi" | tail -n 15
  echo "@@DONE"; sync; echo o > /proc/sysrq-trigger; sleep 30
}
t rootfs-init
for m in configfs target_core_mod target_core_user iscsi_target_mod iscsi_tcp sd_mod; do modprobe $m || fail "modprobe-$m"; done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
ip link set lo up
t modules-loaded

dbus-daemon --system --fork || fail dbus "dbus-daemon did not start"
truncate -s 256M /var/lib/cachelun/lun0.img
tcmuguest -dir /var/lib/cachelun -dbus "" > /run/tcmud.log 2>&1 &
for i in $(seq 1 100); do grep -q READY /run/tcmud.log && break; sleep 0.1; done
grep -q "dbus=true" /run/tcmud.log && pass daemon-dbus || { fail daemon-dbus "$(cat /run/tcmud.log)"; finish; }
iscsid || fail iscsid
t daemons-started

IQN=iqn.2003-01.org.example.cachelun:tcmu
targetcli ls /backstores > /tmp/ls.txt 2>&1
grep -q "user:cachelun" /tmp/ls.txt && pass targetcli-lists "user:cachelun" || { fail targetcli-lists "$(cat /tmp/ls.txt)"; finish; }
targetcli /backstores/user:cachelun create name=nosuch size=64M cfgstring=missingvol > /tmp/bad.txt 2>&1
grep -qi "missingvol" /tmp/bad.txt && ! [ -d /sys/kernel/config/target/core/user_*/nosuch ] && pass checkconfig-refuses "$(tr '\n' ' ' < /tmp/bad.txt)" || fail checkconfig-refuses "$(cat /tmp/bad.txt)"
targetcli /backstores/user:cachelun create name=lun0 size=256M cfgstring=lun0 wwn=0123456789abcdef > /tmp/c.txt 2>&1 && pass backstore-create || { fail backstore-create "$(cat /tmp/c.txt)"; finish; }
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

iscsiadm -m discovery -t sendtargets -p 127.0.0.1 > /tmp/disc.txt 2>&1
grep -q "$IQN" /tmp/disc.txt && pass discovery || { fail discovery "$(cat /tmp/disc.txt)"; finish; }
iscsiadm -m node -T $IQN -p 127.0.0.1 --login > /tmp/login.txt 2>&1 && pass login || { fail login "$(cat /tmp/login.txt)"; finish; }
DEV=
for i in $(seq 1 100); do
  for d in /sys/block/sd*; do [ -e "$d/device/model" ] && grep -q cached-lun $d/device/model && DEV=/dev/${d##*/}; done
  [ -b "$DEV" ] && break; sleep 0.1
done
[ -b "$DEV" ] && pass iscsi-disk "$DEV $(cat /sys/block/${DEV#/dev/}/size) sectors" || { fail iscsi-disk "no disk"; finish; }
t iscsi-logged-in

mkfs.ext4 -q -F $DEV && pass mkfs || fail mkfs
mkdir -p /mnt/l && mount $DEV /mnt/l && pass mount || { fail mount; finish; }
dd if=/dev/urandom of=/mnt/l/a bs=1M count=12 status=none
dd if=/dev/urandom of=/mnt/l/b bs=4k count=300 status=none
mkdir -p /mnt/l/dir; for i in $(seq 1 50); do echo "file $i" > /mnt/l/dir/f$i; done
(cd /mnt/l && find . -type f | sort | xargs md5sum) > /tmp/sums
sync
umount /mnt/l && pass umount || fail umount
echo 3 > /proc/sys/vm/drop_caches
mount $DEV /mnt/l && (cd /mnt/l && md5sum -c --quiet /tmp/sums) && pass remount-verify "$(wc -l < /tmp/sums) files" || fail remount-verify "checksums differ after remount"
umount /mnt/l
t fs-done

iscsiadm -m node -T $IQN -p 127.0.0.1 --logout > /dev/null 2>&1 && pass logout || fail logout
targetcli clearconfig confirm=True > /tmp/clear.txt 2>&1 && pass clearconfig || fail clearconfig "$(cat /tmp/clear.txt)"
t teardown-done
finish

#!/bin/bash
# PID 1 of the tier-4 Debian guest (after switch_root): a dm-multipath
# client of two cachelun nodes on the host. No systemd: start udevd (the
# multipath udev rules and device nodes), iscsid and multipathd, log in to
# both nodes' portals (10.0.2.2 is the host's loopback through qemu's user
# network), make ext4 on the multipath map and write fsync'd files; then
# ask the host to kill the owning node ("@@KILL-OWNER") while a writer goes
# on, and check that multipath moved the I/O to the other node without
# one error reaching the file system.
#
# The kernel command line carries cachelun.iqn=IQN and
# cachelun.portals=HOST:PORT,HOST:PORT (the owner's portal first).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /etc/multipath
. /etc/vm-diag.sh
VM_LOGS="/run/multipathd.log /run/iscsid.log"
VM_DIAG_CMD='echo "---- iscsiadm -m session -P 3"; timeout 10 iscsiadm -m session -P 3 2>&1 | head -n 80
echo "---- multipath -ll"; timeout 10 multipath -ll 2>&1
echo "---- multipathd show paths"; timeout 10 multipathd show paths 2>&1
echo "---- dmsetup table / status"; timeout 10 dmsetup table 2>&1; timeout 10 dmsetup status 2>&1'
vm_watchdog_start
finish() {
  t finish
  if vm_failed; then vm_diag "failed steps"; else
    echo "---- multipath -ll"; timeout 10 multipath -ll 2>&1
    echo "---- multipathd log (path events)"; grep -iE "fail|reinstat|switch|prio|ghost|remaining|queue" /run/multipathd.log | tail -n 40
    echo "---- dmesg (paths, ALUA, iSCSI)"; dmesg | grep -iE "alua|multipath|iscsi|connection|session|error|ext4|dm-" | tail -n 60
  fi
  echo "@@DONE"; sync; echo o > /proc/sysrq-trigger; sleep 30
}
# bounded SECS NAME CMD...: CMD must end within SECS seconds, or the step
# fails by name and the guest prints its diagnostics while CMD is stuck.
bounded() {
  local secs=$1 name=$2; shift 2
  "$@" & local p=$!
  for i in $(seq 1 $((secs*10))); do
    kill -0 $p 2>/dev/null || { wait $p; return; }
    sleep 0.1
  done
  fail $name "still running after ${secs}s: $*"
  finish
}
up() { cut -d' ' -f1 /proc/uptime; }
param() { sed -n "s/.*cachelun\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
IQN=$(param iqn)
PORTALS=$(param portals)
PA=${PORTALS%%,*} PB=${PORTALS##*,}
[ -n "$IQN" ] && [ -n "$PA" ] && [ "$PA" != "$PB" ] || { fail params "cachelun.iqn='$IQN' cachelun.portals='$PORTALS'"; finish; }
# disk_of PORTAL: the sd device of the iSCSI session connected to PORTAL
# (HOST:PORT), from sysfs; empty if there is none (yet)
disk_of() {
  local c s d
  for c in /sys/class/iscsi_connection/connection*; do
    [ -e "$c" ] || continue
    [ "$(cat $c/persistent_address):$(cat $c/persistent_port)" = "$1" ] || continue
    s=${c##*/connection}; s=${s%%:*}
    for d in /sys/class/iscsi_session/session$s/device/target*/*/block/*; do [ -e "$d" ] && echo ${d##*/} && return 0; done
  done
}
# session_state PORTAL: LOGGED_IN, FAILED, ... of the session to PORTAL
session_state() {
  local c s
  for c in /sys/class/iscsi_connection/connection*; do
    [ -e "$c" ] || continue
    [ "$(cat $c/persistent_address):$(cat $c/persistent_port)" = "$1" ] || continue
    s=${c##*/connection}; s=${s%%:*}
    cat /sys/class/iscsi_session/session$s/state
  done
}
# path DEV: multipathd's view of a path: "dm-state checker-state priority"
path() { multipathd show paths raw format "%d %t %T %p" 2>/dev/null | awk -v d=$1 '$1 == d { print $2, $3, $4 }'; }

t rootfs-init
for m in virtio_net iscsi_tcp sd_mod scsi_dh_alua dm_multipath dm_service_time dm_round_robin; do modprobe $m || fail "modprobe-$m"; done
# The guest's only route is its own subnet: it reaches the host (10.0.2.2)
# and nothing beyond.
ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || { fail net "$(ip addr 2>&1)"; finish; }
for p in $PA $PB; do
  timeout 10 bash -c "exec 3<>/dev/tcp/${p%:*}/${p#*:}" 2>/tmp/tcp.err || { fail net "portal $p unreachable: $(cat /tmp/tcp.err)"; finish; }
done
pass net "eth0 10.0.2.15/24, portals $PA and $PB reachable"
t net-up

# udevd: the multipath-tools and dmsetup rules (path WWIDs, /dev/mapper
# nodes), as on an installed system
udevd=$(command -v systemd-udevd || ls /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd 2>/dev/null | head -n 1)
[ -n "$udevd" ] && $udevd --daemon && udevadm trigger --action=add && bounded 60 udev-settle udevadm settle --timeout=50 \
  || { fail udev "no udevd ($udevd)"; finish; }
cat > /etc/multipath.conf <<'EOF'
defaults {
	# every cachelun path is multipathed, even before a second one exists
	find_multipaths no
	# path checks each second: a failed path and a standby path that
	# turns active are seen within a second or two
	polling_interval 1
	max_polling_interval 4
	user_friendly_names yes
}
blacklist {
	devnode "^vd[a-z]"
}
devices {
	device {
		vendor "CACHELUN"
		product "cached-lun"
		# one path group per ALUA state: the owner's port
		# (active/optimized, prio 50) serves, the standby node's port
		# (prio 1) waits
		path_grouping_policy group_by_prio
		prio alua
		hardware_handler "1 alua"
		# TEST UNIT READY: NOT READY, standby (04h/0Bh) makes the
		# standby path a ghost, not a failed one
		path_checker tur
		failback immediate
		# Queue I/O for at most 30 checks (about 30 s at one per
		# second) when no path is usable, then fail it: the takeover
		# by the standby node (peer_timeout 2 s plus the fencing, about
		# 3 s) fits ten times over, and an application on a cluster
		# that is really gone gets its errors instead of hanging
		# forever (queue).
		no_path_retry 30
	}
}
EOF
iscsid -f > /run/iscsid.log 2>&1 &
# iscsiadm reaches iscsid on its abstract socket
for i in $(seq 1 100); do grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix && break; sleep 0.1; done
# Node records by hand (no SendTargets: the nodes advertise the host's
# 127.0.0.1). replacement_timeout 5: a path whose session is down fails its
# I/O to dm-multipath after 5 s, which sends it down the other path (the
# default, 120 s, is for a single path).
for p in $PA $PB; do
  iscsiadm -m node -o new -T $IQN -p $p > /tmp/new.txt 2>&1 \
    && iscsiadm -m node -T $IQN -p $p -o update -n node.session.timeo.replacement_timeout -v 5 >> /tmp/new.txt 2>&1 \
    || { fail node-records "$p: $(cat /tmp/new.txt)"; finish; }
  bounded 60 login sh -c "iscsiadm -m node -T $IQN -p $p --login > /tmp/login.txt 2>&1" || { fail login "$p: $(cat /tmp/login.txt)"; finish; }
done
for i in $(seq 1 100); do DA=$(disk_of $PA); DB=$(disk_of $PB); [ -n "$DA" ] && [ -n "$DB" ] && break; sleep 0.1; done
[ -n "$DA" ] && [ -n "$DB" ] && pass login "$PA: $DA, $PB: $DB, $(cat /sys/block/$DA/size) sectors, $(cat /sys/block/$DA/device/vendor) $(cat /sys/block/$DA/device/model)" \
  || { fail login "disks: '$DA' '$DB'"; finish; }
bounded 60 udev-settle udevadm settle --timeout=50
t logged-in

multipathd -d -s -v3 > /run/multipathd.log 2>&1 &
MAP=
for i in $(seq 1 300); do
  MAP=$(dmsetup ls --target multipath 2>/dev/null | awk 'NR == 1 && $1 != "No" { print $1 }')
  [ -n "$MAP" ] && [ -b /dev/mapper/$MAP ] && [ "$(path $DA | cut -d' ' -f3)" = 50 ] && [ "$(path $DB | cut -d' ' -f2)" = ghost ] && break
  sleep 0.2
done
multipath -ll > /tmp/ll.txt 2>&1
# one map over both paths, two path groups: the owner's (prio 50, active)
# and the standby's (prio 1, its path a ghost)
nmaps=$(dmsetup ls --target multipath 2>/dev/null | grep -vc "^No")
groups=$(grep -c "policy=" /tmp/ll.txt)
if [ -n "$MAP" ] && [ "$nmaps" = 1 ] && [ "$groups" = 2 ] && grep -A1 "prio=50 status=active" /tmp/ll.txt | grep -q " $DA " \
  && grep -A1 "prio=1 status=enabled" /tmp/ll.txt | grep " $DB " | grep -q ghost; then
  pass multipath-map "$MAP: $DA [$(path $DA)] $DB [$(path $DB)]"
else
  fail multipath-map "$nmaps maps, $groups path groups, $DA [$(path $DA)] $DB [$(path $DB)]: $(tr '\n' '|' < /tmp/ll.txt)"; finish
fi
t multipath-up

MNT=/mnt/m
mkfs.ext4 -q -F /dev/mapper/$MAP > /tmp/mkfs.txt 2>&1 && pass mkfs || { fail mkfs "$(cat /tmp/mkfs.txt)"; finish; }
mkdir -p $MNT && mount /dev/mapper/$MAP $MNT && pass mount || { fail mount; finish; }
mkdir -p $MNT/pre $MNT/live
# put FILE NAME: copy FILE to $MNT/NAME with fsync, and record its sum once
# the fsync has returned
put() { dd if=$1 of=$MNT/$2 bs=256k conv=fsync status=none && echo "$(sha256sum < $1 | cut -d' ' -f1)  $2" >> /tmp/sums; }
bad=
for i in $(seq 1 20); do
  head -c 262144 /dev/urandom > /tmp/pre.$i
  put /tmp/pre.$i pre/$i || bad="$bad $i"
done
[ -z "$bad" ] && pass fsync-files "20 files of 256 KiB" || { fail fsync-files "files$bad"; finish; }
t files-written

# The writer: a new 256 KiB file of its own random data, fsync'd, after
# the other, before, during and after the failover; each fsync's return
# time (uptime) goes to /tmp/done.
: > /tmp/done
( i=0; while [ ! -e /tmp/stopw ]; do
    head -c 262144 /dev/urandom > /tmp/w.cur
    put /tmp/w.cur live/$i || { echo "file $i at $(up)" > /tmp/writer.err; exit 1; }
    echo "$i $(up)" >> /tmp/done; i=$((i+1))
  done ) &
W=$!
for i in $(seq 1 200); do [ $(wc -l < /tmp/done) -ge 3 ] && break; sleep 0.1; done
echo "cachelun-vm: owner killed" > /dev/kmsg
KILL_AT=$(up); nkill=$(wc -l < /tmp/done)
echo "@@KILL-OWNER"
t kill-requested
# The host kills the owner: its session fails (the guest sees the TCP
# connection end), ...
for i in $(seq 1 600); do [ "$(session_state $PA)" != LOGGED_IN ] && break; sleep 0.1; done
st=$(session_state $PA)
[ "$st" != LOGGED_IN ] && pass owner-path-lost "session to $PA $st $(awk -v a=$(up) -v k=$KILL_AT 'BEGIN { printf "%.1f s after the marker", a - k }')" \
  || { fail owner-path-lost "session to $PA still $st 60 s after the marker"; finish; }
LOST_AT=$(up); nlost=$(wc -l < /tmp/done)
t owner-path-lost
# ... and multipath serves the writer through the other node: its path
# active (prio 50, checker ready), and ten more files fsync'd after the
# owner's path was seen lost
ok=
for i in $(seq 1 1200); do
  [ -e /tmp/writer.err ] && break
  [ "$(path $DB)" = "active ready 50" ] && [ $(wc -l < /tmp/done) -ge $((nlost + 10)) ] && { ok=1; break; }
  sleep 0.1
done
touch /tmp/stopw
if wait $W && [ -n "$ok" ]; then
  pass io-across-failover "$(wc -l < /tmp/done) files fsync'd by the writer, $nkill before the marker, $nlost when the path was lost"
else
  fail io-across-failover "writer: $(cat /tmp/writer.err 2>/dev/null || echo running); $DB [$(path $DB)]; $(wc -l < /tmp/done) files"; finish
fi
t failover-done
# The stall a process saw: the longest wait between two fsync'd files from
# the marker on, and when the first fsync after it returned.
stall=$(awk -v k=$KILL_AT 'BEGIN { prev = k } $2 >= k { g = $2 - prev; if (g > max) { max = g; at = $2 } prev = $2 } END { printf "%.2f s (fsync returned at +%.2f s after the marker)", max, at - k }' /tmp/done)
pass stall "$stall"
echo "@@STALL $(awk -v k=$KILL_AT 'BEGIN { prev = k } $2 >= k { g = $2 - prev; if (g > max) max = g; prev = $2 } END { printf "%.2f", max }' /tmp/done)"
# b's path is in the active path group (the failed path of a may share it:
# multipathd keeps a faulty path's last priority, so group_by_prio can put
# both in one group), and a's path is failed. multipathd's own view of a
# path's device-mapper state follows the kernel's a moment later (its
# checker can report a's path faulty while it still shows it active), so
# this waits up to 10 s for the three to agree.
other_node() {
  mpA=$(path $DA) mpB=$(path $DB)
  multipath -ll > /tmp/ll2.txt 2>&1
  groupB=$(awk -v d=" $DB " '/policy=/ { st = $NF } index($0, d) { print st }' /tmp/ll2.txt)
  [ "$mpB" = "active ready 50" ] && [ "$groupB" = status=active ] && [ "${mpA%% *}" = failed ]
}
ok=
for i in $(seq 1 100); do other_node && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] && pass multipath-other-node "$DB [$mpB] serves, $DA [$mpA]" || fail multipath-other-node "$DA [$mpA] $DB [$mpB] in $groupB: $(tr '\n' '|' < /tmp/ll2.txt)"

# every fsync'd file, read from the other node (page cache dropped), after
# a remount, and the file system clean
sync; echo 3 > /proc/sys/vm/drop_caches
n=$(wc -l < /tmp/sums)
(cd $MNT && sha256sum -c --quiet /tmp/sums) > /tmp/c1.txt 2>&1 && pass files-after-failover "$n files" || fail files-after-failover "$(head -n 5 /tmp/c1.txt)"
bounded 90 umount umount $MNT && pass umount || fail umount
bounded 120 fsck sh -c "e2fsck -fn /dev/mapper/$MAP > /tmp/fsck.txt 2>&1" && pass fsck "clean" || fail fsck "$(tail -n 5 /tmp/fsck.txt)"
mount /dev/mapper/$MAP $MNT && (cd $MNT && sha256sum -c --quiet /tmp/sums) > /tmp/c2.txt 2>&1 && pass files-after-remount "$n files" \
  || fail files-after-remount "$(head -n 5 /tmp/c2.txt)"
umount $MNT
# Path errors on the killed node's disk are expected; none may reach the
# multipath map or the file system.
dmesg > /tmp/dmesg.txt
errs=$(grep -E "I/O error, dev dm-|Buffer I/O error|EXT4-fs error|EXT4-fs warning|Aborting journal|JBD2: .*[Ee]rror|Detected IO errors|Remounting filesystem read-only" /tmp/dmesg.txt | head -n 5)
[ -z "$errs" ] && pass no-fs-errors "path errors on $DA: $(grep -c "I/O error, dev $DA" /tmp/dmesg.txt); multipath: $(grep -E "multipath: .*(Failing|Reinstating)|alua: port group" /tmp/dmesg.txt | sed 's/^\[[^]]*\] //' | tr '\n' '|' | tail -c 400)" \
  || fail no-fs-errors "$errs"
t checks-done
finish

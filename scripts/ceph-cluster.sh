#!/usr/bin/env bash
# ceph-cluster.sh: a throwaway single-node Ceph cluster (one mon, one mgr,
# one OSD) on 127.0.0.1 for tests, from Debian's ceph packages, without
# systemd. Everything lives in DIR; daemons are stopped by the pids this
# script recorded, never by name.
#
#   ceph-cluster.sh start DIR       start a fresh cluster in DIR (wiped first);
#                                   prints CEPH_CONF=... and CEPH_KEYRING=...
#   ceph-cluster.sh stop DIR        stop the daemons started in DIR
#   ceph-cluster.sh stop-osd DIR    stop only the OSD (for outage tests)
#   ceph-cluster.sh start-osd DIR   start the OSD again, wait until it is up
#
# Environment:
#   PORT_BASE=17300     mon v2 on PORT_BASE, v1 on PORT_BASE+1, mgr and OSD
#                       bind in PORT_BASE+2..PORT_BASE+29; give parallel
#                       clusters bases at least 30 apart
#   OBJECTSTORE=bluestore   bluestore on a sparse file, or memstore
#   BLOCK_SIZE=8G       size of the sparse BlueStore file (memstore: bytes of RAM)
#   READY_TIMEOUT=180   seconds a start may wait for the cluster to be usable
#   WATCH_PID=PID       start: also stop the cluster (and, with REMOVE_DIR=1,
#                       remove DIR) when process PID ends, so a test process
#                       killed before its cleanup leaves no daemons behind
set -euo pipefail

usage() { echo "usage: $0 start|stop|stop-osd|start-osd DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
DIR=$2
PORT_BASE=${PORT_BASE:-17300}
OBJECTSTORE=${OBJECTSTORE:-bluestore}
BLOCK_SIZE=${BLOCK_SIZE:-8G}
READY_TIMEOUT=${READY_TIMEOUT:-180}

t0=$(date +%s%N)
log() { printf '[ceph-cluster %5ds] %s\n' $(( ($(date +%s%N) - t0) / 1000000000 )) "$*" >&2; }

# ceph_cli runs a ceph CLI command against this cluster, bounded: the CLI
# itself waits up to 300 s for a monitor by default.
ceph_cli() { timeout 30 ceph -c "$DIR/ceph.conf" --connect-timeout 15 "$@"; }

# is_ours PID: PID is a running ceph daemon of this cluster (its command line
# names our ceph.conf), so a recycled pid or another cluster is never signalled.
is_ours() {
	local pid=$1
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-c $DIR/ceph.conf"
}

# stop_daemons NAME...: SIGTERM each named daemon (osd.0, mgr.x, mon.a) by
# its pid file, wait up to 20 s for all of them, then SIGKILL stragglers.
stop_daemons() {
	local name f pid pids=() deadline
	for name in "$@"; do
		f=$DIR/run/$name.pid
		[ -f "$f" ] || continue
		pid=$(cat "$f" 2>/dev/null || true)
		if is_ours "$pid"; then
			kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
		fi
		rm -f "$f"
	done
	deadline=$(( $(date +%s) + 20 ))
	for pid in ${pids[@]+"${pids[@]}"}; do
		while [ -d "/proc/$pid" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
		if [ -d "/proc/$pid" ]; then
			log "pid $pid did not exit after SIGTERM; SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
	log "stopped $* (pids: ${pids[*]:-none})"
}

# wait_until WHAT SECONDS CMD...: run CMD every second until it succeeds or
# SECONDS pass; on timeout print WHAT and CMD's last output and fail.
wait_until() {
	local what=$1 secs=$2 out deadline
	shift 2
	deadline=$(( $(date +%s) + secs ))
	while :; do
		if out=$("$@" 2>&1); then
			return 0
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "ceph-cluster: timed out after ${secs}s waiting for $what: $out" >&2
			return 1
		fi
		sleep 1
	done
}

# status_ready: the cluster is usable: HEALTH_OK, an active mgr, the OSD up
# and in, and every PG active+clean. HEALTH_OK alone is not enough: the mon
# hides a missing mgr for its first two minutes.
status_ready() {
	ceph_cli status -f json | python3 -c '
import json, sys
d = json.load(sys.stdin)
health = d["health"]["status"]
osdmap = d["osdmap"].get("osdmap", d["osdmap"])
up, inn = osdmap["num_up_osds"], osdmap["num_in_osds"]
mgr = d.get("mgrmap", {}).get("available", False)
pg = d["pgmap"]
clean = sum(s["count"] for s in pg.get("pgs_by_state", []) if s["state_name"] == "active+clean")
state = "%s osd_up=%d osd_in=%d mgr=%s pgs_clean=%d/%d" % (health, up, inn, mgr, clean, pg.get("num_pgs", 0))
ok = health == "HEALTH_OK" and up == 1 and inn == 1 and mgr and clean == pg.get("num_pgs", 0)
print(state)
sys.exit(0 if ok else 1)
'
}

osd_up() {
	ceph_cli osd dump -f json | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(o["osd"] == 0 and o["up"] == 1 for o in d["osds"]) else 1)
'
}

rados_roundtrip() {
	local in=$DIR/run/probe.in out=$DIR/run/probe.out
	date +%s%N >"$in"
	timeout 30 rados -c "$DIR/ceph.conf" -p probe put probe "$in" &&
		timeout 30 rados -c "$DIR/ceph.conf" -p probe get probe "$out" &&
		cmp -s "$in" "$out"
}

start_osd() {
	ceph-osd -c "$DIR/ceph.conf" -i 0
	wait_until "osd.0 up" "$READY_TIMEOUT" osd_up
	log "osd.0 up (pid $(cat "$DIR/run/osd.0.pid"))"
}

start() {
	if compgen -G "$DIR/run/*.pid" >/dev/null; then
		echo "ceph-cluster: $DIR/run holds pid files; run $0 stop $DIR first" >&2
		exit 1
	fi
	for tool in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rados python3 uuidgen; do
		command -v "$tool" >/dev/null || { echo "ceph-cluster: $tool not found (install ceph-mon ceph-osd ceph-mgr ceph-common)" >&2; exit 1; }
	done
	mkdir -p "$DIR"
	DIR=$(cd "$DIR" && pwd)
	rm -rf "${DIR:?}"/{mon,mgr,osd,log,run,crash,ceph.conf,keyring,monmap}
	mkdir -p "$DIR"/{mon,mgr/ceph-x,osd,log,run,crash}
	trap 'echo "ceph-cluster: start failed; stopping what was started (logs in $DIR/log)" >&2; stop_daemons osd.0 mgr.x mon.a' ERR

	local fsid osd_uuid bytes mon_v2=$PORT_BASE mon_v1=$((PORT_BASE + 1))
	fsid=$(uuidgen)
	osd_uuid=$(uuidgen)
	bytes=$(numfmt --from=iec "$BLOCK_SIZE")
	cat >"$DIR/ceph.conf" <<EOF
# written by scripts/ceph-cluster.sh: a throwaway test cluster, loopback only
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
# the mgr and the OSD bind in this cluster's own port range, so clusters with
# different PORT_BASE values run side by side
ms bind port min = $((PORT_BASE + 2))
ms bind port max = $((PORT_BASE + 29))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keyring
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
crash dir = $DIR/crash
# one OSD: no replication, no failure domain above the OSD
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# mgr modules are read from [global] only; the default set would add restful
mgr initial modules = iostat
# a small CI machine
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 2

[client]
# clients of the same user would fight over one admin socket
admin socket =

[mon.a]
mon data = $DIR/mon

[mgr]
mgr data = $DIR/mgr/\$cluster-\$id

[osd]
osd data = $DIR/osd
osd objectstore = $OBJECTSTORE
osd crush update on start = false
# BlueStore creates its block file itself; setting "bluestore block path"
# makes mkfs fail on the symlink it then creates
bluestore block create = true
bluestore block size = $bytes
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
bluestore fsck on mount = false
memstore device bytes = $bytes
osd class load list = *
osd class default list = *
EOF

	ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool "$DIR/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
	ceph-authtool "$DIR/keyring" --gen-key -n osd.0 \
		--cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
	ceph-authtool "$DIR/keyring" --gen-key -n mgr.x \
		--cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
	chmod 600 "$DIR/keyring"

	monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]" "$DIR/monmap" >/dev/null
	ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
	ceph-mon -c "$DIR/ceph.conf" -i a
	wait_until "the monitor" 60 ceph_cli mon stat
	log "mon.a up on 127.0.0.1:$mon_v2 (pid $(cat "$DIR/run/mon.a.pid"))"

	ceph-mgr -c "$DIR/ceph.conf" -i x
	log "mgr.x started"

	local id
	id=$(ceph_cli osd new "$osd_uuid")
	[ "$id" = 0 ] || { echo "ceph-cluster: the mon gave osd id $id, want 0" >&2; false; }
	ceph_cli osd crush add osd.0 1 root=default >/dev/null 2>&1
	ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/osd-mkfs.out" 2>&1 ||
		{ cat "$DIR/log/osd-mkfs.out" >&2; false; }
	log "osd.0 mkfs done ($OBJECTSTORE, $BLOCK_SIZE)"
	start_osd

	wait_until "HEALTH_OK, an active mgr and clean PGs" "$READY_TIMEOUT" status_ready
	log "ready: $(status_ready 2>/dev/null || true)"

	ceph_cli osd pool create probe 8 >/dev/null 2>&1
	wait_until "a rados put/get round trip" 60 rados_roundtrip
	ceph_cli osd pool delete probe probe --yes-i-really-really-mean-it >/dev/null 2>&1
	log "rados round trip ok"
	trap - ERR

	if [ -n "${WATCH_PID:-}" ]; then
		# detached from our caller's process group and output
		setsid bash "$0" watch "$DIR" </dev/null >>"$DIR/log/watch.log" 2>&1 &
	fi
	echo "CEPH_CONF=$DIR/ceph.conf"
	echo "CEPH_KEYRING=$DIR/keyring"
}

# watch: wait until WATCH_PID ends, then stop the cluster; return at once
# when the cluster was stopped otherwise (its mon pid file is gone).
watch() {
	local pid=${WATCH_PID:?WATCH_PID not set}
	while [ -d "/proc/$pid" ] && [ -f "$DIR/run/mon.a.pid" ]; do sleep 2; done
	[ -f "$DIR/run/mon.a.pid" ] || exit 0
	log "process $pid ended without stopping the cluster; stopping it"
	stop_daemons osd.0 mgr.x mon.a
	if [ "${REMOVE_DIR:-}" = 1 ]; then rm -rf "${DIR:?}"; fi
}

case $cmd in
start) start ;;
watch)
	DIR=$(cd "$DIR" && pwd)
	watch
	;;
stop)
	[ -d "$DIR" ] || exit 0
	DIR=$(cd "$DIR" && pwd)
	stop_daemons osd.0 mgr.x mon.a
	;;
stop-osd)
	DIR=$(cd "$DIR" && pwd)
	stop_daemons osd.0
	;;
start-osd)
	DIR=$(cd "$DIR" && pwd)
	if is_ours "$(cat "$DIR/run/osd.0.pid" 2>/dev/null || true)"; then
		echo "ceph-cluster: osd.0 already runs" >&2
		exit 1
	fi
	start_osd
	;;
*) usage ;;
esac

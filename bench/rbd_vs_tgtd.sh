#!/usr/bin/env bash
# Side-by-side benchmark on Ceph RBD, in one run on one cluster with images
# of one size: cachelun serving an RBD image (built with -tags ceph), tgtd
# with its bs_rbd backing store (Debian package tgt-rbd) serving another,
# and `rbd bench` on the image directly (librbd, no iSCSI, no target).
# Prints every figure and the ratio cachelun/tgtd-rbd.
#
#   bash bench/rbd_vs_tgtd.sh                    # starts a throwaway cluster (scripts/ceph-cluster.sh)
#   CEPH_DIR=/tmp/c bash bench/rbd_vs_tgtd.sh    # uses one started with `ceph-cluster.sh start /tmp/c`
#   DUR=20 IMG_MIB=1024 bash bench/rbd_vs_tgtd.sh
#
# Rows: 4 KiB random read QD32 with the working set in the cache (cachelun's
# LUN was read once, so every read is a hit), 4 KiB random write QD32, 4 KiB
# FUA writes QD32 (qemu-img bench -t writethrough), 256 KiB sequential read
# QD8 (in the cache), and cold 4 KiB random reads QD32 on a LUN the cache
# has never seen (every read a miss, filled into the cache). tgtd-rbd has no
# cache: its reads always go to the OSDs. tgtd runs with librbd's defaults
# (its rbd cache on, as tgtd-rbd is deployed); cachelun turns librbd's
# cache off (it is the cache); rbd bench runs with it off too.
#
# Needs, as root (tgtd): ceph packages (.ci/run), librbd-dev (the ceph
# build), tgt + tgt-rbd, libiscsi-bin (iscsi-perf), qemu-utils +
# qemu-block-extra (qemu-img, qemu-io), bc. Loopback only; every client
# call is bounded by a timeout; processes are stopped by their pids.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-10}                    # seconds per iscsi-perf / rbd bench measurement
IMG_MIB=${IMG_MIB:-512}           # every image and LUN, MiB
IMG_BYTES=$((IMG_MIB << 20))
WCOUNT=${WCOUNT:-30000}           # qemu-img bench writes per write row
CACHE_MIB=${CACHE_MIB:-$((IMG_MIB * 3 + 1024))}
WORK=$(mktemp -d /tmp/cachelun-rbdbench.XXXXXX)
OUT=$WORK/out; mkdir -p "$OUT"
POOL=bench

for t in iscsi-perf qemu-img qemu-io tgtd tgtadm bc rbd ceph; do
	command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }
done
[ -e /usr/lib/tgt/backing-store/bs_rbd.so ] || { echo "missing tgtd's bs_rbd (apt-get install tgt-rbd)" >&2; exit 1; }

PIDS=()
TGT_CTL=$((1000 + $$ % 30000))
OWN_CLUSTER=""
cleanup() {
	tgtadm -C $TGT_CTL --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
	tgtadm -C $TGT_CTL --op delete --mode system >/dev/null 2>&1 || true
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
	sleep 1
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	if [ -n "$OWN_CLUSTER" ]; then bash scripts/ceph-cluster.sh stop "$OWN_CLUSTER" >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${CEPH_DIR:-}" ]; then
	echo "starting a throwaway Ceph cluster" >&2
	OWN_CLUSTER=$WORK/ceph
	bash scripts/ceph-cluster.sh start "$OWN_CLUSTER" > "$OUT/ceph-start.log" 2>&1 || { cat "$OUT/ceph-start.log"; exit 1; }
	CEPH_DIR=$OWN_CLUSTER
fi
CONF=$(cd "$CEPH_DIR" && pwd)/ceph.conf
R() { timeout 300 "$@" -c "$CONF"; }
R ceph osd pool create $POOL 8 >/dev/null 2>&1 || true
R rbd pool init $POOL >/dev/null 2>&1 || true
# three images of one size, written in full (reads then reach the OSDs'
# data, not librbd's answer for objects that do not exist): one per target
# and a cold one for cachelun's read misses
for img in c t cold cold2; do
	R rbd rm --no-progress $POOL/$img >/dev/null 2>&1 || true
	R rbd create --size ${IMG_MIB}M $POOL/$img
	R rbd bench --io-type write --io-pattern seq --io-size 4M --io-threads 8 --io-total ${IMG_MIB}M $POOL/$img > "$OUT/fill-$img.log"
done

echo "building cachelun -tags ceph" >&2
go build -tags ceph -o "$WORK/cachelun" ./cmd/cachelun

cat > "$WORK/cachelun.toml" <<EOF
[global]
log_level = "info"
admin_socket = "off"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "${CACHE_MIB}MiB"
segment_size = "16MiB"
# no data_crc: with it a 4 KiB read hit verifies the CRC of the whole key it
# falls in, and a fill's key is as long as the miss that made it (up to
# the 8 MiB the warm-up reads ask for): hot 4 KiB reads ran at ~100 IOPS
# here with data_crc = true, ~70K without

[[volume]]
name = "rbd"
cache = "c0"
backing = "rbd:$POOL/c"
ceph_conf = "$CONF"
sequential_cutoff = 0          # keep the sequential warm-up in the cache
congested_read_threshold = "0s"
congested_write_threshold = "0s"

[[volume]]
name = "cold"
cache = "c0"
backing = "rbd:$POOL/cold"
ceph_conf = "$CONF"
sequential_cutoff = 0
congested_read_threshold = "0s"
congested_write_threshold = "0s"

# the same cold reads without a fill: what the RBD path itself costs
[[volume]]
name = "cold-pt"
cache = "c0"
backing = "rbd:$POOL/cold2"
ceph_conf = "$CONF"
mode = "passthrough"

[[target]]
iqn = "iqn.2026-11.io.cachelun:rbdbench"
portals = ["127.0.0.1:3260"]
[[target.lun]]
lun = 0
volume = "rbd"
[[target.lun]]
lun = 1
volume = "cold"
[[target.lun]]
lun = 2
volume = "cold-pt"
EOF
CPORT=$(free_port)
mkdir -p "$WORK/data"
dd if=/dev/zero of="$WORK/data/cache.img" bs=1M count="$CACHE_MIB" status=none
"$WORK/cachelun" format --segment-size 16MiB "$WORK/data/cache.img" > "$OUT/format.log" 2>&1
"$WORK/cachelun" serve --config "$WORK/cachelun.toml" --data-dir "$WORK/data" --listen 127.0.0.1:$CPORT > "$OUT/cachelun.log" 2>&1 &
CPID=$!; PIDS+=($CPID)
for _ in $(seq 600); do grep -q "cachelun ready" "$OUT/cachelun.log" 2>/dev/null && break; sleep 0.1; done
grep -q "cachelun ready" "$OUT/cachelun.log" || { cat "$OUT/cachelun.log"; exit 1; }
C_URL=iscsi://127.0.0.1:$CPORT/iqn.2026-11.io.cachelun:rbdbench

TPORT=$(free_port)
tgtd -f -C $TGT_CTL --iscsi portal=127.0.0.1:$TPORT > "$OUT/tgtd.log" 2>&1 &
TPID=$!; PIDS+=($TPID)
for _ in $(seq 100); do tgtadm -C $TGT_CTL --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
A="tgtadm -C $TGT_CTL --lld iscsi"
$A --op new --mode target --tid 1 -T iqn.2024-01.test.tgtd:rbdbench
$A --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd --backing-store $POOL/t --bsopts "conf=$CONF;id=admin"
$A --op bind --mode target --tid 1 -I ALL
T_URL=iscsi://127.0.0.1:$TPORT/iqn.2024-01.test.tgtd:rbdbench/1

echo "warming up: reading cachelun's LUN 0 once (fills the cache)" >&2
timeout 600 qemu-io -f raw -c "read 0 $IMG_BYTES" "$C_URL/0" > "$OUT/warm.log"
timeout 600 qemu-io -f raw -c "read 0 $IMG_BYTES" "$C_URL/0" >> "$OUT/warm.log"

# perf LABEL URL ARGS... -> IOPS
perf() {
	local label=$1 url=$2; shift 2
	timeout -k 5 -s INT "$DUR" iscsi-perf "$@" "$url" > "$OUT/$label.log" 2>&1 || true
	local iops
	iops=$(tr '\r' '\n' < "$OUT/$label.log" | grep -o "iops average [0-9]*" | tail -1 | awk '{print $3}')
	echo "${iops:-0}"
}
# qbench LABEL URL ARGS... -> IOPS
qbench() {
	local label=$1 url=$2; shift 2
	timeout -k 5 300 qemu-img bench -f raw "$@" "$url" > "$OUT/$label.log" 2>&1 || true
	python3 - "$OUT/$label.log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"Sending (\d+) \w+ requests, (\d+) bytes each", t); r = re.search(r"Run completed in ([\d.]+) seconds", t)
print(round(int(m.group(1)) / float(r.group(1))) if m and r else 0)
PY
}
# rbdbench LABEL TYPE PATTERN SIZE THREADS -> IOPS (librbd cache off)
rbdbench() {
	local label=$1 type=$2 pattern=$3 size=$4 threads=$5
	timeout -k 5 $((DUR * 6)) rbd -c "$CONF" bench --rbd-cache=false --io-type "$type" --io-pattern "$pattern" --io-size "$size" \
		--io-threads "$threads" --io-total "$((DUR * 1000))M" $POOL/t > "$OUT/$label.log" 2>&1 &
	local p=$!
	sleep "$DUR"; kill -INT $p 2>/dev/null || true; wait $p 2>/dev/null || true
	# rbd bench prints "SEC OPS OPS/SEC BYTES/SEC" each second; the mean of those lines
	awk '$1 ~ /^[0-9]+$/ && NF >= 4 {s += $3; n++} END {if (n) printf "%d\n", s / n; else print 0}' "$OUT/$label.log"
}

ratio() { if [ "$2" = 0 ]; then echo "n/a"; else echo "scale=2; $1 / $2" | bc; fi; }
ROWS=()
row() { ROWS+=("$(printf '%-40s %10s %10s %10s %7s' "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")")"); }

echo "measuring (${DUR}s per run)" >&2
c=$(perf c-rr32 "$C_URL/0" -m 32 -b 8 -r); t=$(perf t-rr32 "$T_URL" -m 32 -b 8 -r); r=$(rbdbench r-rr32 read rand 4K 32)
row "4KiB random read QD32, hot (IOPS)" "$c" "$t" "$r"
r_rr32=$r
c=$(qbench c-w32 "$C_URL/0" -w -t none -c "$WCOUNT" -d 32 -s 4k); t=$(qbench t-w32 "$T_URL" -w -t none -c "$WCOUNT" -d 32 -s 4k); r=$(rbdbench r-w32 write rand 4K 32)
row "4KiB random write QD32 (IOPS)" "$c" "$t" "$r"
c=$(qbench c-fua "$C_URL/0" -w -t writethrough -c "$((WCOUNT / 3))" -d 32 -s 4k); t=$(qbench t-fua "$T_URL" -w -t writethrough -c "$((WCOUNT / 3))" -d 32 -s 4k)
row "4KiB FUA write QD32 (IOPS)" "$c" "$t" "$r"
c=$(perf c-seq "$C_URL/0" -m 8 -b 512); t=$(perf t-seq "$T_URL" -m 8 -b 512); r=$(rbdbench r-seq read seq 256K 8)
row "256KiB seq read QD8 (MiB/s)" "$((c / 4))" "$((t / 4))" "$((r / 4))"
c=$(perf c-cold "$C_URL/1" -m 32 -b 8 -r); t=$(perf t-cold "$T_URL" -m 32 -b 8 -r)
row "4KiB random read QD32, cold misses (IOPS)" "$c" "$t" "$r_rr32"
c=$(perf c-cold-pt "$C_URL/2" -m 32 -b 8 -r)
row "  same, passthrough: no fill (IOPS)" "$c" "$t" "$r_rr32"

echo
printf '%-40s %10s %10s %10s %7s\n' "measurement" "cachelun" "tgtd-rbd" "rbd bench" "ratio"
printf '%s\n' "${ROWS[@]}"
echo
echo "ratio = cachelun / tgtd-rbd. Images ${IMG_MIB} MiB; ${DUR}s per iscsi-perf and rbd bench run; qemu-img bench: $WCOUNT writes (FUA: $((WCOUNT / 3)))."
echo "rbd bench: the write column of the FUA row is its plain write (librbd cache off: every write is on the OSDs when it completes);"
echo "the cold row's rbd bench figure is the first row's (librbd has no cache here: every read is a miss); tgtd-rbd is measured again."
kill -0 $CPID 2>/dev/null || echo "WARNING: cachelun died during the run"

#!/usr/bin/env bash
# Side-by-side benchmark of cachelun (a cached LUN whose working set is in
# the cache) and tgtd (a file of the same size) on 127.0.0.1, in one run.
# Prints every figure for both and the ratio cachelun/tgtd (for CPU per I/O,
# lower is better; for everything else higher is better).
#
#   bash bench/iscsi_vs_tgtd.sh            # 10 s per measurement
#   DUR=20 bash bench/iscsi_vs_tgtd.sh     # longer runs (LUN_MIB, HOT_MIB change the sizes)
#   ONLY=writes bash bench/iscsi_vs_tgtd.sh # one group: reads, writes, sessions, hot, cold, load or full
#   CRUNS=5 ONLY=cold bash bench/iscsi_vs_tgtd.sh # cold-read runs per target (median; default 3)
#   WRUNS=5 bash bench/iscsi_vs_tgtd.sh    # qemu-img bench runs per target (median; default 3)
#   FULL_ROWS=quick ONLY=full bash bench/iscsi_vs_tgtd.sh # some rows of the full group (quick cached sustained)
#                                           # (the cache file, CACHE_MIB, grows to hold them)
#
# Needs (as root for tgtd): libiscsi-bin (iscsi-perf), qemu-utils +
# qemu-block-extra (qemu-img, qemu-io), tgt (tgtd, tgtadm), bc.
# Everything stays on loopback; every client call is bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-10}                  # seconds per iscsi-perf measurement
LUN_MIB=${LUN_MIB:-512}         # cachelun LUN and tgtd file size, MiB
HOT_MIB=${HOT_MIB:-64}          # hot set on the slow backing device, MiB
LUN_SIZE=${LUN_MIB}MiB; LUN_BYTES=$((LUN_MIB << 20))
HOT_SIZE=${HOT_MIB}MiB; HOT_BYTES=$((HOT_MIB << 20))
WRUNS=${WRUNS:-3}               # qemu-img bench runs per target and row (median)
CRUNS=${CRUNS:-3}               # cold-read runs per target (median), each on a fresh LUN
LOAD_DUR=${LOAD_DUR:-20}        # seconds of the load group's readers
# The cache holds the warm-up, every write run (about 900 MB each) and the
# hot set below the GC threshold (70 %).
CACHE_MIB=${CACHE_MIB:-$(( (LUN_MIB + HOT_MIB * 2 + WRUNS * 900) * 10 / 7 + 256 ))}
WORK=$(mktemp -d /tmp/cachelun-bench.XXXXXX)
OUT=$WORK/out; mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)

for t in iscsi-perf qemu-img qemu-io tgtd tgtadm bc; do
	command -v $t >/dev/null || { echo "missing $t (apt-get install -y libiscsi-bin qemu-utils qemu-block-extra tgt bc)" >&2; exit 1; }
done

PIDS=()
TGT_CTL=$((1000 + $$ % 30000))
cleanup() {
	tgtadm -C $TGT_CTL --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
	tgtadm -C $TGT_CTL --op delete --mode system >/dev/null 2>&1 || true
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
	sleep 1
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }

echo "building cachelun" >&2
go build -o "$WORK/cachelun" ./cmd/cachelun

# ---- cachelun: LUN 0 cached (working set in cache), LUNs 1/2 on a slow
# backing device (latency=5ms): 1 cached, 2 passthrough
cat > "$WORK/cachelun.toml" <<EOF
[global]
log_level = "info"
admin_socket = "off"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "${CACHE_MIB}MiB"       # the log holds every write of the run below its GC threshold
segment_size = "16MiB"
data_crc = true                # keys carry data CRCs: a commit persists once, not twice

[[volume]]
name = "fast"
cache = "c0"
backing = "fast.img"
backing_size = "$LUN_SIZE"
sequential_cutoff = 0          # keep the sequential warm-up in the cache
congested_read_threshold = "0s"
congested_write_threshold = "0s"

[[volume]]
name = "hot"
cache = "c0"
backing = "hot.img"
backing_size = "$HOT_SIZE"
slow = "latency=5ms"
sequential_cutoff = 0
congested_read_threshold = "0s"
congested_write_threshold = "0s"

[[volume]]
name = "hot-passthrough"
cache = "c0"
backing = "hot-pt.img"
backing_size = "$HOT_SIZE"
slow = "latency=5ms"
mode = "passthrough"

[[target]]
iqn = "iqn.2026-11.io.cachelun:bench"
portals = ["127.0.0.1:3260"]
[[target.lun]]
lun = 0
volume = "fast"
[[target.lun]]
lun = 1
volume = "hot"
[[target.lun]]
lun = 2
volume = "hot-passthrough"
EOF
CPORT=$(free_port)
# Both data files are written with dd before their target starts, so both
# are in the page cache alike. (A cache file that the daemon creates is
# zero-filled around the page cache; its first pass then allocates page
# cache as it goes, which on a VM that returns free memory to its host,
# as this one does with virtio-balloon free page reporting, costs a host
# page fault per new page: up to a third of the write rate, varying from
# run to run.)
mkdir -p "$WORK/data"
dd if=/dev/zero of="$WORK/data/cache.img" bs=1M count="$CACHE_MIB" status=none
"$WORK/cachelun" format --data-crc --segment-size 16MiB "$WORK/data/cache.img" > "$OUT/format.log" 2>&1
"$WORK/cachelun" serve --config "$WORK/cachelun.toml" --data-dir "$WORK/data" --listen 127.0.0.1:$CPORT > "$OUT/cachelun.log" 2>&1 &
CPID=$!; PIDS+=($CPID)
for _ in $(seq 100); do grep -q "cachelun ready" "$OUT/cachelun.log" 2>/dev/null && break; sleep 0.1; done
grep -q "cachelun ready" "$OUT/cachelun.log" || { cat "$OUT/cachelun.log"; exit 1; }
C_URL=iscsi://127.0.0.1:$CPORT/iqn.2026-11.io.cachelun:bench

# ---- tgtd on a page-cache-resident file of the same size
TPORT=$(free_port)
dd if=/dev/zero of="$WORK/tgtd.img" bs=1M count=$((LUN_BYTES >> 20)) status=none
tgtd -f -C $TGT_CTL --iscsi portal=127.0.0.1:$TPORT > "$OUT/tgtd.log" 2>&1 &
TPID=$!; PIDS+=($TPID)
for _ in $(seq 100); do tgtadm -C $TGT_CTL --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
A="tgtadm -C $TGT_CTL --lld iscsi"
$A --op new --mode target --tid 1 -T iqn.2024-01.test.tgtd:bench
$A --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgtd.img"
$A --op bind --mode target --tid 1 -I ALL
T_URL=iscsi://127.0.0.1:$TPORT/iqn.2024-01.test.tgtd:bench/1

# ---- warm-up: write the whole cachelun LUN (it lands in the cache), read it
echo "warming up the cached LUN" >&2
timeout 300 qemu-io -f raw -c "write -P 0x5a 0 $LUN_BYTES" "$C_URL/0" > "$OUT/warm.log"
timeout 300 qemu-io -f raw -c "read 0 $LUN_BYTES" "$C_URL/0" >> "$OUT/warm.log"
timeout 300 qemu-io -f raw -c "write -P 0x5a 0 $LUN_BYTES" "$T_URL" >> "$OUT/warm.log"
# Both files are now dirty in the page cache: write them out, so that the
# kernel's background writeback does not run during the first measurement
# of either target.
sync

# perf LABEL PID URL ARGS... -> "iops cpu_seconds"
perf() {
	local label=$1 pid=$2 url=$3; shift 3
	local c0 c1
	c0=$(cpu_ticks "$pid")
	timeout -k 5 -s INT "$DUR" iscsi-perf "$@" "$url" > "$OUT/$label.log" 2>&1 || true
	c1=$(cpu_ticks "$pid")
	local iops
	iops=$(tr '\r' '\n' < "$OUT/$label.log" | grep -o "iops average [0-9]*" | tail -1 | awk '{print $3}')
	echo "${iops:-0} $(echo "scale=3; ($c1 - $c0) / $HZ" | bc)"
}

# qbench LABEL URL ARGS... -> "iops"
qbench() {
	local label=$1 url=$2; shift 2
	timeout -k 5 120 qemu-img bench -f raw "$@" "$url" > "$OUT/$label.log" 2>&1 || true
	python3 - "$OUT/$label.log" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"Sending (\d+) \w+ requests, (\d+) bytes each", t); r = re.search(r"Run completed in ([\d.]+) seconds", t)
print(round(int(m.group(1)) / float(r.group(1))) if m and r else 0)
PY
}

two_sessions() {
	local label=$1 pid=$2 url=$3
	local c0 c1 a b
	c0=$(cpu_ticks "$pid")
	timeout -k 5 -s INT "$DUR" iscsi-perf -m 32 -b 8 -r -i iqn.2010-11.libiscsi:s1 "$url" > "$OUT/$label-s1.log" 2>&1 &
	timeout -k 5 -s INT "$DUR" iscsi-perf -m 32 -b 8 -r -i iqn.2010-11.libiscsi:s2 "$url" > "$OUT/$label-s2.log" 2>&1 &
	wait %1 %2 2>/dev/null || true
	c1=$(cpu_ticks "$pid")
	a=$(tr '\r' '\n' < "$OUT/$label-s1.log" | grep -o "iops average [0-9]*" | tail -1 | awk '{print $3}')
	b=$(tr '\r' '\n' < "$OUT/$label-s2.log" | grep -o "iops average [0-9]*" | tail -1 | awk '{print $3}')
	echo "$(( ${a:-0} + ${b:-0} )) $(echo "scale=3; ($c1 - $c0) / $HZ" | bc)"
}

ratio() { if [ "${2%.*}" = 0 ] && [ "$2" = 0 ]; then echo "n/a"; else echo "scale=2; $1 / $2" | bc; fi; }
ROWS=()
row() { ROWS+=("$(printf '%-44s %14s %14s %8s' "$1" "$2" "$3" "$(ratio "$2" "$3")")"); }

# Each target is measured alone: cachelun is stopped (SIGSTOP) while tgtd
# runs, so that its background writeback of dirty cache data, which runs at
# full speed once the LUN is idle, does not take CPU and disk from tgtd.
# tgtd has no background work of its own; the kernel's writeback of its file
# is done (sync) before cachelun runs again.
t_run() {
	kill -STOP "$CPID"
	local rc=0
	"$@" || rc=$?
	sync
	kill -CONT "$CPID"
	return $rc
}

echo "measuring (${DUR}s per iscsi-perf run)" >&2
# ONLY=reads|writes|sessions|hot runs one group of rows (default: all).
want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
if want reads; then
for qd in 1 32 128; do
	read -r ci cc < <(perf c-rr-qd$qd $CPID "$C_URL/0" -m $qd -b 8 -r)
	read -r ti tc < <(t_run perf t-rr-qd$qd $TPID "$T_URL" -m $qd -b 8 -r)
	row "iscsi-perf 4KiB random read QD$qd (IOPS)" "$ci" "$ti"
	if [ $qd = 32 ]; then
		cu=$(echo "scale=1; 1000000 * $cc / ($ci * $DUR)" | bc 2>/dev/null || echo 0)
		tu=$(echo "scale=1; 1000000 * $tc / ($ti * $DUR)" | bc 2>/dev/null || echo 0)
		row "target CPU per 4KiB read at QD32 (us)" "$cu" "$tu"
	fi
done
read -r ci _ < <(perf c-seq256k $CPID "$C_URL/0" -m 8 -b 512)
read -r ti _ < <(t_run perf t-seq256k $TPID "$T_URL" -m 8 -b 512)
row "iscsi-perf 256KiB seq read QD8 (MiB/s)" "$((ci / 4))" "$((ti / 4))"
fi

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# qbench_pair LABEL ARGS... -> "cachelun_iops tgtd_iops": a qemu-img bench
# run takes seconds, and one run of either target varies by up to 15 %
# between runs on a small shared machine, so each target runs WRUNS times,
# alternating with the other, and each side's median is reported. The
# cache is sized so that all these writes fit in its log below the GC
# threshold: this measures the cache absorbing writes. Once the log is full,
# every write also costs its writeback to the backing file (on the same
# disk here) and GC; that steady state is slower and not measured here.
qbench_pair() {
	local label=$1; shift
	local cs=() ts=() i
	for i in $(seq "$WRUNS"); do
		cs+=("$(qbench c-$label-$i "$C_URL/0" "$@")")
		ts+=("$(t_run qbench t-$label-$i "$T_URL" "$@")")
	done
	echo "runs: cachelun ${cs[*]}; tgtd ${ts[*]}" > "$OUT/$label.runs"
	echo "$(median "${cs[@]}") $(median "${ts[@]}")"
}

if want writes; then
read -r ci ti < <(qbench_pair w4k-qd32 -w -t none -c 200000 -d 32 -s 4k)
row "qemu-img bench 4KiB write QD32 (IOPS)" "$ci" "$ti"
read -r ci ti < <(qbench_pair w4k-fua -w -t writethrough -c 20000 -d 32 -s 4k)
row "qemu-img bench 4KiB writethrough/FUA QD32 (IOPS)" "$ci" "$ti"
fi

if want sessions; then
read -r ci cc < <(two_sessions c-2s $CPID "$C_URL/0")
read -r ti tc < <(t_run two_sessions t-2s $TPID "$T_URL")
row "2 sessions x QD32 4KiB random read (IOPS)" "$ci" "$ti"
cu=$(echo "scale=1; 1000000 * $cc / ($ci * $DUR)" | bc 2>/dev/null || echo 0)
tu=$(echo "scale=1; 1000000 * $tc / ($ti * $DUR)" | bc 2>/dev/null || echo 0)
row "target CPU per I/O, 2 sessions (us)" "$cu" "$tu"
fi

# on_fresh_lun LABEL TEMPLATE CONFIG CMD ARGS... starts a cachelun daemon on
# a new data directory (its backing file a copy of TEMPLATE, unless empty;
# the configuration CONFIG, the quick start's if empty), runs CMD ARGS...
# with FRESH_PID and FRESH_URL set to the daemon and its LUN, stops the
# daemon, removes the directory and prints what CMD printed.
on_fresh_lun() {
	local label=$1 tpl=$2 cfg=$3; shift 3
	local d=$WORK/fresh/$label port out args=()
	mkdir -p "$d"
	[ -n "$tpl" ] && cp "$tpl" "$d/demo-backing.img"
	[ -n "$cfg" ] && args=(--config "$cfg")
	port=$(free_port)
	"$WORK/cachelun" serve "${args[@]}" --listen 127.0.0.1:$port --data-dir "$d" --metrics off > "$OUT/$label-serve.log" 2>&1 &
	FRESH_PID=$!; PIDS+=($FRESH_PID)
	FRESH_URL=iscsi://127.0.0.1:$port/iqn.2026-11.io.cachelun:demo/0
	for _ in $(seq 300); do grep -q "cachelun ready" "$OUT/$label-serve.log" 2>/dev/null && break; sleep 0.1; done
	out=$("$@")
	kill -TERM $FRESH_PID; wait $FRESH_PID 2>/dev/null || true
	rm -rf "$d"
	echo "$out"
}

# data_template DIR MIB LUN writes DIR/backing.tpl, MIB MiB of random data
# (in the page cache from then on), and puts a copy of it, DIR/tgtd.img,
# behind tgtd's LUN LUN; prints that LUN's URL.
data_template() {
	mkdir -p "$1"
	dd if=/dev/urandom of="$1/backing.tpl" bs=1M count="$2" status=none
	cp "$1/backing.tpl" "$1/tgtd.img"
	$A --op new --mode logicalunit --tid 1 --lun "$3" -b "$1/tgtd.img"
	echo "iscsi://127.0.0.1:$TPORT/iqn.2024-01.test.tgtd:bench/$3"
}
# drop_template DIR LUN undoes data_template, so that the groups after it
# do not run beside its files in the page cache.
drop_template() {
	$A --op delete --mode logicalunit --tid 1 --lun "$2" || echo "tgtadm: LUN $2 left in place" >&2
	rm -rf "$1"
}

# ---- cold reads: a fresh quick-start LUN (256 MiB cache, 1 GiB backing
# file) whose backing file holds data in the page cache, against tgtd on a
# copy of the same file: every read of cachelun's LUN misses at first and
# its fills go on throughout (the cache holds a quarter of the file). Each
# cachelun run starts a new daemon on a new data directory (a fresh cache);
# the other daemons are stopped while one target is measured.
if want cold; then
COLD=$WORK/cold
T_COLD=$(data_template "$COLD" 1024 2)
cold_perf() { perf "$1" "$FRESH_PID" "$FRESH_URL" -m 32 -b 8 -r; } # LABEL -> "iops cpu_seconds"
kill -STOP "$CPID"
cs=(); ts=(); ccpu=(); tcpu=()
for i in $(seq "$CRUNS"); do
	read -r ci cc < <(on_fresh_lun c-cold-$i "$COLD/backing.tpl" "" cold_perf c-cold-$i)
	read -r ti tc < <(perf t-cold-$i $TPID "$T_COLD" -m 32 -b 8 -r)
	sync
	cs+=("$ci"); ts+=("$ti")
	ccpu+=("$(echo "scale=1; 1000000 * $cc / (($ci + 1) * $DUR)" | bc)")
	tcpu+=("$(echo "scale=1; 1000000 * $tc / (($ti + 1) * $DUR)" | bc)")
done
kill -CONT "$CPID"
echo "runs: cachelun ${cs[*]}; tgtd ${ts[*]}" > "$OUT/cold.runs"
drop_template "$COLD" 2
row "cold 4KiB random read QD32, fresh LUN (IOPS)" "$(median "${cs[@]}")" "$(median "${ts[@]}")"
row "target CPU per cold 4KiB read at QD32 (us)" "$(median "${ccpu[@]}")" "$(median "${tcpu[@]}")"
fi

# ---- cold reads under load: a fresh LUN of 2 GiB with a 512 MiB cache (the
# quick start's configuration, both sizes doubled) whose backing file holds
# data in the page cache, read by six sessions of 4 KiB random reads at QD32
# while two sessions write 4 KiB at QD32 (qemu-img bench, a stride of 7919
# blocks: not a sequential stream, so the writes go through the cache);
# tgtd on a copy of the same file takes the same load. Reported: the six
# readers' IOPS and the two writers' in total over LOAD_DUR seconds from
# the LUN's first command, while the cache fills. Each target runs alone.
if want load; then
LOAD=$WORK/load
T_LOAD=$(data_template "$LOAD" 2048 4)
sed -e 's/^size = "256MiB"$/size = "512MiB"/' -e 's/^backing_size = "1GiB"$/backing_size = "2GiB"/' conf/default.toml > "$LOAD/load.toml"
grep -q '^size = "512MiB"$' "$LOAD/load.toml" && grep -q '^backing_size = "2GiB"$' "$LOAD/load.toml" ||
	{ echo "conf/default.toml: no 256MiB cache and 1GiB backing file to resize" >&2; exit 1; }
# under_load LABEL URL -> "read_iops write_iops": six readers and two
# writers on URL for LOAD_DUR seconds. A writer runs qemu-img bench rounds
# of 5000 writes back to back (one from the LUN's start, one from its
# middle); the writes of the rounds that completed in time count.
load_writer() { # LABEL URL OFFSET -> writes done
	local label=$1 url=$2 off=$3 end=$((SECONDS + LOAD_DUR)) done=0 r=0
	while [ $SECONDS -lt $end ]; do
		timeout -k 5 -s INT $((end - SECONDS + 1)) qemu-img bench -f raw -w -t none -c 5000 -d 32 -s 4k \
			-S $((4096 * 7919)) -o $((off + r * 4096)) "$url" > "$OUT/$label.log" 2>&1 || break
		grep -q "Run completed" "$OUT/$label.log" || break
		done=$((done + 5000)); r=$((r + 1))
	done
	echo "$done"
}
under_load() {
	local label=$1 url=$2 i total=0 iops writes=0 w
	for i in 0 1; do
		load_writer "$label-w$i" "$url" $((i << 30)) > "$OUT/$label-w$i.count" &
	done
	for i in 1 2 3 4 5 6; do
		timeout -k 5 -s INT "$LOAD_DUR" iscsi-perf -m 32 -b 8 -r -i iqn.2010-11.libiscsi:load$i "$url" > "$OUT/$label-r$i.log" 2>&1 &
	done
	wait $(jobs -p) 2>/dev/null || true
	for i in 1 2 3 4 5 6; do
		iops=$(tr '\r' '\n' < "$OUT/$label-r$i.log" | grep -o "iops average [0-9]*" | tail -1 | awk '{print $3}')
		total=$((total + ${iops:-0}))
	done
	for i in 0 1; do
		w=$(cat "$OUT/$label-w$i.count"); writes=$((writes + ${w:-0}))
	done
	echo "$total $((writes / LOAD_DUR))"
}
under_load_fresh() { under_load "$1" "$FRESH_URL"; }
kill -STOP "$CPID"
cs=(); ts=(); cw=(); tw=()
for i in $(seq "$CRUNS"); do
	read -r ci cwi < <(on_fresh_lun c-load-$i "$LOAD/backing.tpl" "$LOAD/load.toml" under_load_fresh c-load-$i)
	cp "$LOAD/backing.tpl" "$LOAD/tgtd.img"
	read -r ti twi < <(under_load t-load-$i "$T_LOAD")
	sync
	cs+=("$ci"); ts+=("$ti"); cw+=("$cwi"); tw+=("$twi")
done
kill -CONT "$CPID"
echo "runs: reads cachelun ${cs[*]}; tgtd ${ts[*]}; writes cachelun ${cw[*]}; tgtd ${tw[*]}" > "$OUT/load.runs"
drop_template "$LOAD" 4
row "fresh 2GiB LUN: 6 QD32 readers (IOPS)" "$(median "${cs[@]}")" "$(median "${ts[@]}")"
row "  beside them, 2 QD32 writers (IOPS)" "$(median "${cw[@]}")" "$(median "${tw[@]}")"
fi

# ---- writes into a full cache: a fresh quick-start LUN (256 MiB cache,
# 1 GiB backing file) takes the quick start's write benchmark (234 MiB of
# 4 KiB writes at QD32, qemu-img bench) against tgtd on a fresh file of the
# same size: as the quick start has it (qemu-img bench writes in order, so
# past the 4 MiB sequential cutoff the stream bypasses the cache, as in
# bcache), and with sequential_cutoff = "0", every write through the cache.
# Then 1.5 GiB of them with every write through the cache (six times the
# cache: every write past the first ~180 MiB waits for writeback and GC),
# against tgtd and against the backing file itself taking the same writes
# (qemu-img bench on the file, O_DIRECT), in one run. Each target runs
# alone.
if want full; then
FULL=$WORK/full; mkdir -p "$FULL"
truncate -s 1G "$FULL/tgtd-full.img"
$A --op new --mode logicalunit --tid 1 --lun 3 -b "$FULL/tgtd-full.img"
T_FULL=iscsi://127.0.0.1:$TPORT/iqn.2024-01.test.tgtd:bench/3
# the quick start's configuration with every write through the cache
sed 's/^mode = "writeback"$/mode = "writeback"\nsequential_cutoff = "0"/' conf/default.toml > "$FULL/cached.toml"
grep -q '^sequential_cutoff = "0"' "$FULL/cached.toml" || { echo "conf/default.toml: no writeback volume to set sequential_cutoff on" >&2; exit 1; }
full_qbench() { qbench "$1" "$FRESH_URL" -w -t none -c "$2" -d 32 -s 4k; } # LABEL COUNT -> "iops"
kill -STOP "$CPID"
for spec in ${FULL_ROWS:-quick cached sustained}; do
	case $spec in
	quick) set -- quick 60000 "" ;;
	cached) set -- cached 60000 "$FULL/cached.toml" ;;
	sustained) set -- sustained 400000 "$FULL/cached.toml" ;;
	*) echo "FULL_ROWS: quick, cached or sustained, not $spec" >&2; exit 2 ;;
	esac
	cs=(); ts=(); fs=()
	for i in $(seq "$WRUNS"); do
		cs+=("$(on_fresh_lun c-full-$1-$i "" "$3" full_qbench c-full-$1-$i "$2")")
		ts+=("$(qbench t-full-$1-$i "$T_FULL" -w -t none -c "$2" -d 32 -s 4k)")
		sync
		if [ "$1" = sustained ]; then
			truncate -s 1G "$FULL/direct.img"
			fs+=("$(qbench f-full-$1-$i "$FULL/direct.img" -w -t none -c "$2" -d 32 -s 4k)")
			rm -f "$FULL/direct.img"
		fi
	done
	echo "runs ($1): cachelun ${cs[*]}; tgtd ${ts[*]}; backing file ${fs[*]}" >> "$OUT/full.runs"
	if [ "$1" = quick ]; then
		row "quick start: 60000 4KiB writes QD32 (IOPS)" "$(median "${cs[@]}")" "$(median "${ts[@]}")"
	elif [ "$1" = cached ]; then
		row "  same, sequential_cutoff 0 (all cached)" "$(median "${cs[@]}")" "$(median "${ts[@]}")"
	else
		row "6x the cache in 4KiB writes QD32, all cached" "$(median "${cs[@]}")" "$(median "${ts[@]}")"
		row "  same, cachelun vs the backing file itself" "$(median "${cs[@]}")" "$(median "${fs[@]}")"
	fi
done
kill -CONT "$CPID"
fi

# ---- hot set on a slow backing device: cached vs passthrough (same daemon)
HOTROWS=()
if want hot; then
timeout 300 qemu-io -f raw -c "write -P 0x6b 0 $HOT_BYTES" "$C_URL/1" >> "$OUT/warm.log"
timeout 300 qemu-io -f raw -c "read 0 $HOT_BYTES" "$C_URL/1" >> "$OUT/warm.log"
# QD1 is the latency-bound case a cache exists for; at QD32 the passthrough
# LUN gains from the slow device serving its 32 requests in parallel.
for qd in 1 32; do
	read -r hi _ < <(perf c-hot-cached-qd$qd $CPID "$C_URL/1" -m $qd -b 8 -r)
	read -r pi _ < <(perf c-hot-pt-qd$qd $CPID "$C_URL/2" -m $qd -b 8 -r)
	HOTROWS+=("$(printf '%-44s %14s %14s %8s' "hot set 4KiB rand read QD$qd, slow 5ms (IOPS)" "$hi" "$pi" "$(ratio "$hi" "$pi")")")
done
fi

echo
printf '%-44s %14s %14s %8s\n' "measurement" "cachelun" "tgtd" "ratio"
printf '%s\n' "${ROWS[@]}"
echo
printf '%-44s %14s %14s %8s\n' "" "cached" "passthrough" "ratio"
printf '%s\n' "${HOTROWS[@]}"
if [ ${#HOTROWS[@]} -gt 0 ]; then
	# The passthrough LUN serves QD requests in parallel, each taking the
	# device latency: QD / 5 ms is its limit. The cached LUN is limited by
	# the target itself (the QD32 random read row of LUN 0, when measured).
	echo "bound on the QD32 ratio: cached LUN <= the target's own QD32 read rate; passthrough <= 32 / 5 ms = 6400 IOPS"
fi
echo
if want cold; then
	echo "cold rows: median of $CRUNS alternating runs per target, each cachelun run on a fresh quick-start LUN:"
	cat "$OUT/cold.runs"
fi
if want load; then
	echo "load rows: IOPS of six readers and of two writers in total over ${LOAD_DUR}s, median of $CRUNS alternating runs per target, each cachelun run on a fresh LUN:"
	cat "$OUT/load.runs"
fi
if want full; then
	echo "full-cache rows: median of $WRUNS alternating runs per target, each cachelun run on a fresh quick-start LUN:"
	cat "$OUT/full.runs"
fi
if want writes; then
	echo "qemu-img bench rows: median of $WRUNS alternating runs per target:"
	cat "$OUT/w4k-qd32.runs" "$OUT/w4k-fua.runs"
fi
echo "(${DUR}s per iscsi-perf run; LUN $LUN_SIZE; hot set $HOT_SIZE; logs were in $OUT)"
kill -0 $CPID 2>/dev/null || echo "WARNING: cachelun died during the run"

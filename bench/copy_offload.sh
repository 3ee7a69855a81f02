#!/usr/bin/env bash
# Copy offload (issue 19): a 1 GiB copy of cached data against the same
# copy done by the host, for a cached source and for a source only on the
# backing device, on cache files without and with data CRCs, at two levels:
#
#   engine  cachecore's BenchmarkCopy1GiB: Volume.CopyFrom (what EXTENDED
#           COPY and WRITE USING TOKEN use) against 1 MiB reads and writes
#           through the volume;
#   iscsi   target/iscsi's BenchmarkXCopy1GiB: EXTENDED COPY (LID1, block
#           to block within one LUN) sent over TCP to the iSCSI target
#           against READ(16) and WRITE(16) of 1 MiB through it, one command
#           at a time (dd bs=1M).
#
# Runs the Go benchmarks RUNS times and prints the median of each figure.
#
#   bash bench/copy_offload.sh          # 3 runs
#   RUNS=5 bash bench/copy_offload.sh
#
# Each benchmark's cache file (6.25 GiB) goes to a temporary directory; the
# backing device is in memory (about 3 GiB of RAM at the end of a run).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
out=$(go test -run '^$' -bench 'Copy1GiB' -benchtime 1x -count "$RUNS" ./cachecore/ ./target/iscsi/)
echo "$out" | grep '^Benchmark' >&2
echo "$out" | awk '
/^Benchmark(X?Copy1GiB)\// {
	name = $1; sub(/-[0-9]+$/, "", name)
	level = (name ~ /^BenchmarkXCopy/) ? "iscsi" : "engine"
	sub(/^BenchmarkX?Copy1GiB\//, "", name)
	name = level " " name
	for (i = 5; i < NF; i += 2) { key = name " " $(i+1); vals[key] = vals[key] " " $i; keys[key] = 1 }
}
END {
	for (k in keys) {
		n = split(substr(vals[k], 2), a, " ")
		# median by insertion sort
		for (i = 2; i <= n; i++) { v = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > v + 0) { a[j+1] = a[j]; j-- }; a[j+1] = v }
		split(k, f, " ")
		printf "%-7s %-16s %-20s %12.1f  (median of %d)\n", f[1], f[2], f[3], a[int((n + 1) / 2)], n
	}
}' | sort

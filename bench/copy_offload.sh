#!/usr/bin/env bash
# Copy offload in the engine (issue 19, "copy in the cache"): a 1 GiB copy
# within a cached volume by Volume.CopyFrom (what EXTENDED COPY and WRITE
# USING TOKEN use) against the same copy done by the host (1 MiB reads and
# writes through the volume), for a cached source and for a source only on
# the backing device, on cache files without and with data CRCs. Runs the
# Go benchmark RUNS times and prints the median of each figure.
#
#   bash bench/copy_offload.sh          # 3 runs
#   RUNS=5 bash bench/copy_offload.sh
#
# The cache file (6.25 GiB) goes to a temporary directory; the backing
# device is in memory (about 3 GiB of RAM at the end of a run).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
out=$(go test -run '^$' -bench 'Copy1GiB' -benchtime 1x -count "$RUNS" ./cachecore/)
echo "$out" | grep '^Benchmark' >&2
echo "$out" | awk '
/^BenchmarkCopy1GiB/ {
	name = $1; sub(/-[0-9]+$/, "", name); sub(/^BenchmarkCopy1GiB\//, "", name)
	for (i = 5; i < NF; i += 2) { key = name " " $(i+1); vals[key] = vals[key] " " $i; keys[key] = 1 }
}
END {
	for (k in keys) {
		n = split(substr(vals[k], 2), a, " ")
		# median by insertion sort
		for (i = 2; i <= n; i++) { v = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > v + 0) { a[j+1] = a[j]; j-- }; a[j+1] = v }
		printf "%-16s %-20s %12.1f  (median of %d)\n", substr(k, 1, index(k, " ") - 1), substr(k, index(k, " ") + 1), a[int((n + 1) / 2)], n
	}
}' | sort

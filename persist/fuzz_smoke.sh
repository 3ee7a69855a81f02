#!/bin/sh
# Runs every fuzz target of package persist for a few seconds each (CI smoke).
# Usage: persist/fuzz_smoke.sh [seconds]   (default 5)
set -eu
cd "$(dirname "$0")"
t="${1:-5}"
for target in FuzzSuperblock FuzzRecord FuzzKey FuzzKSet FuzzReplay FuzzOpen; do
	echo "== $target (${t}s)"
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "${t}s" .
done

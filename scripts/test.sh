#!/usr/bin/env bash
# Runs every check CI runs: the missing test packages installed
# (scripts/deps.sh), gofmt, go vet, staticcheck, go mod tidy -diff, the whole
# test suite with the race detector (integration tests included), the
# engine's tests with live invariant checks, the ceph-tagged RBD backing
# tests when Ceph is installed, and every fuzz target for a few seconds.
#
# Usage: bash scripts/test.sh           the full run (FUZZTIME=10s to fuzz longer)
#        bash scripts/test.sh --short   the edit-test loop: set-up, gofmt,
#                                       go vet and go test -short ./...
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
case "${1:-}" in
--short) short=true ;;
"") ;;
*) echo "usage: bash scripts/test.sh [--short]" >&2; exit 2 ;;
esac

FUZZTIME=${FUZZTIME:-5s}
# staticcheck release, pinned so that a new check never fails an unchanged tree;
# installed by its module version (the proxy may refuse the release name)
STATICCHECK_VERSION=2026.1
STATICCHECK_MODULE_VERSION=v0.7.0
start=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" $(( $(date +%s) - start )); }

step "test packages (scripts/deps.sh)"
bash scripts/deps.sh

step "gofmt"
# tracked Go files that exist (a file deleted in the work tree is skipped)
gofiles=$( (git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './integration/tmp/*') | while read -r f; do [ -f "$f" ] && echo "$f"; done)
unformatted=$(gofmt -l $gofiles)
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

step "go vet"
go vet ./...

if $short; then
	step "go test -short"
	go test -short -timeout 10m ./...
	step "short checks passed"
	exit 0
fi

step "staticcheck ${STATICCHECK_VERSION}"
# installed once from the module proxy into GOBIN (GOPATH/bin), then reused
gobin=$(go env GOBIN)
staticcheck="${gobin:-$(go env GOPATH)/bin}/staticcheck"
if ! "$staticcheck" -version 2>/dev/null | grep -q "^staticcheck ${STATICCHECK_VERSION} "; then
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_MODULE_VERSION}"
fi
"$staticcheck" ./...
"$staticcheck" -tags invariants ./cachecore/ ./persist/

step "go mod tidy -diff"
go mod tidy -diff

step "go test -race (integration included)"
go test -race -timeout 45m ./...

step "engine tests with live invariant checks (-tags invariants)"
# every writeback pass and GC step checks the engine's structures and
# panics on the first violation (cachecore/invariants.go)
go test -tags invariants -timeout 20m ./cachecore/ ./persist/

step "ceph build tag: vet, staticcheck, backend/rbd and the RBD integration tests against throwaway Ceph clusters"
# needs cgo, librbd-dev/librados-dev and the ceph daemons (scripts/deps.sh
# installs them); each test process starts its own cluster with
# scripts/ceph-cluster.sh (about 20 s), one after the other
if command -v ceph-mon >/dev/null 2>&1 && [ -e /usr/include/rbd/librbd.h ]; then
	go vet -tags ceph ./...
	"$staticcheck" -tags ceph ./backend/rbd/ ./internal/cephtest/ ./conf/ ./daemon/ ./integration/ ./integration/vm/
	go test -race -tags ceph -timeout 15m ./backend/rbd/
	# the ceph-built binary's configuration rules and daemon wiring
	go test -tags ceph -run 'RBD' ./conf/ ./cmd/cachelun/
	# the daemon built with -tags ceph (and -race) on RBD volumes, and two
	# daemons as a cluster sharing an image (failover with fencing, a frozen
	# owner fenced, a running owner cut off with iptables, a planned move):
	# about four minutes
	go test -race -tags ceph -timeout 20m -run '^(TestRBD|TestCluster)' ./integration/
	# a real dm-multipath client of such a pair: a Debian guest under qemu
	# (open-iscsi, multipathd with ALUA, ext4) rides out the owner's
	# SIGKILL with every fsync'd file intact (integration/vm/doc.go, tier
	# 4): about two minutes with warm caches, plus the rootfs build once.
	# Alone, as the only qemu, and without -race (the daemons run on the
	# host unchanged; the guest is what takes the time).
	go test -tags ceph -timeout 20m -run '^TestTier4Multipath$' ./integration/vm/
else
	echo "skipped: Ceph packages not installed (scripts/deps.sh installs them as root)"
fi

step "fuzz targets, ${FUZZTIME} each"
# fuzz_one runs one target. A failure that wrote a failing input is a real
# finding and fails at once. go test -fuzz before Go 1.27 also fails now and
# then, more often on a loaded machine, with "context deadline exceeded" as
# the fuzz time ends: its coordinator can see its deadline pass before the
# workers' context is cancelled and takes it for an error (go.dev/issue/75804).
# Such a run writes no input; it is tried again, twice at most.
fuzz_one() {
	local dir=$1 target=$2 try out
	for try in 1 2 3; do
		if out=$(go test "$dir" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" 2>&1); then
			printf '%s\n' "$out" | tail -n 2
			return 0
		fi
		printf '%s\n' "$out"
		if printf '%s' "$out" | grep -q 'Failing input written to'; then
			return 1
		fi
		echo "fuzz $dir $target: failed without a failing input (try $try of 3)"
	done
	return 1
}
# every `func FuzzX(f *testing.F)` in a _test.go file, by package directory
grep -rl --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*(f \*testing.F)' . | grep -v '/integration/tmp/' | sort | while read -r file; do
	dir=$(dirname "$file")
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
		echo "fuzz $dir $target"
		fuzz_one "$dir" "$target"
	done
done

step "all checks passed"

#!/usr/bin/env bash
# Installs the Debian packages the test suite needs and lacks: run as root on
# Debian/Ubuntu it calls apt-get (non-interactive, no service started);
# run again it installs nothing. scripts/test.sh runs it first, so
# `bash scripts/test.sh` is the whole set-up on a fresh machine; CI
# (.ci/run) runs scripts/test.sh.
#
# Each feature has its own block: pkgs_<feature> (the packages),
# optionally apt_<feature> (extra apt-get install options) and
# optional_<feature>=1 (a user who is not root may go on without it; the
# block says what its tests do then: skip saying why, or, for the VM tests,
# fail saying what to install), and its name in FEATURES. A new feature (the VM
# assets, ...) adds one block and one name; no other line changes.
set -euo pipefail

# clients: the iSCSI and QEMU clients that integration/ drives
# (iscsi-test-cu, iscsi-perf, qemu-io, qemu-img; qemu-io's iscsi block
# driver lives in qemu-block-extra), tgtd that TestConformance and bench/
# compare against, and bc for bench/.
pkgs_clients="libiscsi-bin qemu-utils qemu-block-extra tgt bc"

# ceph (Debian 12: Pacific): a throwaway single-node cluster for the tests
# (scripts/ceph-cluster.sh) and the librbd/librados headers of
# `go build -tags ceph`; iptables cuts a cluster node off the network in the
# partition tests. Without it scripts/test.sh skips the ceph step.
pkgs_ceph="ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev librados-dev iptables"
apt_ceph="--no-install-recommends"
optional_ceph=1

# browser: Debian's chromium renders the status page (its advisor plot) in
# TestStatusPageInBrowser (admin/coreadapter); without it that test skips,
# saying why.
pkgs_browser="chromium"
optional_browser=1

# vm: what integration/vm needs on the host to boot Debian guests under
# qemu (qemu-system-x86, depmod from kmod) and to build their root file
# systems (mmdebstrap, mke2fs from e2fsprogs). Installed here, before the
# tests run: the VM tests run in parallel and would otherwise each start
# apt-get at once. Without it (not root) the VM tests fail saying what to
# install.
pkgs_vm="qemu-system-x86 kmod mmdebstrap e2fsprogs"
apt_vm="--no-install-recommends"
optional_vm=1

FEATURES="clients ceph browser vm"

installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# missing FEATURE prints the packages of FEATURE that are not installed.
missing() {
	local v="pkgs_$1" p out=()
	for p in ${!v}; do
		installed "$p" || out+=("$p")
	done
	echo "${out[*]}"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "deps: not a Debian system; install the equivalents of:" >&2
	for f in $FEATURES; do
		v="pkgs_$f"
		echo "  $f: ${!v}" >&2
	done
	exit 0
fi

todo=""
for f in $FEATURES; do
	[ -n "$(missing "$f")" ] && todo="$todo $f"
done
[ -z "$todo" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	status=0
	for f in $todo; do
		opt="optional_$f"
		if [ "${!opt:-0}" = 1 ]; then
			echo "deps: $f: missing $(missing "$f") (optional; its tests are skipped)" >&2
		else
			echo "deps: $f: missing $(missing "$f"); run as root or: sudo apt-get install $(missing "$f")" >&2
			status=1
		fi
	done
	exit $status
fi

export DEBIAN_FRONTEND=noninteractive
# The daemon packages (tgt, ceph) must not start services on the machine
# that runs the tests: a policy-rc.d that exits 101 forbids it while they
# install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -q
for f in $todo; do
	opts="apt_$f"
	pkgs=$(missing "$f")
	echo "deps: $f: installing $pkgs"
	# shellcheck disable=SC2086 # word splitting of the lists is intended
	apt-get install -y -q ${!opts:-} $pkgs
done

// Package integration holds cachelun's end-to-end tests. They build the
// cachelun binary once (TestMain), start `cachelun serve` on 127.0.0.1 with
// a free port and a temporary data directory, and drive it with real
// clients: libiscsi's iscsi-ls, iscsi-inq, iscsi-readcapacity16 and
// iscsi-test-cu, and QEMU's qemu-io. The conformance test also starts tgtd
// on 127.0.0.1 as the reference and prints both tables.
//
// The clients are required, not optional: a missing binary fails the test
// with the package that provides it (scripts/deps.sh installs them:
// libiscsi-bin qemu-utils qemu-block-extra tgt). Every client call is bounded
// by a timeout; all traffic stays on the loopback interface.
//
// Outputs for humans (conformance tables, daemon logs of failed runs) go to
// t.Log and to integration/out/ (ignored by git).
//
// This package is imported by nothing.
package integration

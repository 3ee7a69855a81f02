// Package testkit holds the helpers that the tests of every cachelun
// package share, so that each one has a single owner:
//
//   - WaitFor polls a condition with a bound and fails the test with what it
//     was waiting for; tests use it instead of hand-written deadline loops
//     and instead of sleeps that stand in for an event.
//   - RaceEnabled says whether the test binary runs under the race
//     detector, for tests that shrink their loops (the detector slows the
//     code several times) or build the daemon with -race too.
//   - CDB10, CDB12, CDB16, Read10 and Write10 build the SCSI command
//     descriptor blocks that the target/scsi, target/iscsi and target/tcmu
//     tests send.
//
// It is imported by tests only, never by the product, and imports nothing
// but the standard library so that a test of any package (including an
// internal test of a package low in the import graph) can use it. It holds
// no state: every helper works on its arguments.
package testkit

// Package memvol is an in-memory block volume implementing the target/scsi
// Volume contract, for tests of the SCSI device server and the transports
// that must not depend on the cache engine. It is correct rather than fast:
// one RWMutex guards the whole volume, which also makes CompareAndWrite
// atomic. It records how many flushes and FUA writes it saw so tests can
// check that the device server propagates durability requests.
package memvol

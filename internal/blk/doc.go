// Package blk holds the vocabulary every block layer of cachelun shares: the
// Volume interface, the
// sentinel errors a volume returns (which target/scsi maps to sense data), the
// miscompare error of COMPARE AND WRITE, and the context key that carries the
// identity of the I/O stream (initiator port + LUN) down to the cache engine,
// where sequential-bypass detection is keyed by it.
//
// The package has no state and no dependencies beyond the standard library, so
// backend, cachecore and the target packages can all import it without
// creating cycles.
package blk

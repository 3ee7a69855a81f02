package blk

import (
	"context"
	"errors"
)

// ErrUnsupported: an optional operation (Copier, AtomicWriter) cannot serve
// this particular request, for example a copy between volumes of two
// different caches. The caller falls back to the generic path (a copy by
// read and write); it is never reported to an initiator.
var ErrUnsupported = errors.New("operation not supported by this volume")

// Copier is implemented by volumes that can copy data into themselves
// without the caller moving it: the cache engine installs keys for the
// destination that reference data it already holds (issue 19, step 3).
// target/scsi uses it for EXTENDED COPY and WRITE USING TOKEN when the
// destination volume implements it, and otherwise reads the source and
// writes the destination itself.
type Copier interface {
	// CopyFrom makes [dstOff, dstOff+n) of the receiver hold what
	// [srcOff, srcOff+n) of src held when the call started, as if the
	// whole source range were read first and then written: src may be
	// the receiver itself and the ranges may overlap. Offsets and n are
	// multiples of both volumes' block sizes. With fua=true the call
	// returns only when the copied data is durable (the FUA semantics of
	// WriteAt). On an error the destination range may hold a mix of old
	// and copied blocks, as after a failed WRITE; ErrUnsupported means
	// nothing was written and the caller must copy by itself. src may be
	// a wrapper (Unwrapper) of the volume the implementation knows.
	CopyFrom(ctx context.Context, src Volume, srcOff, dstOff, n int64, fua bool) error
}

// AtomicLimits describes the atomic writes a volume guarantees, in bytes.
type AtomicLimits struct {
	// MaxBytes is the largest atomic write; 0 means none.
	MaxBytes int64
	// Alignment: an atomic write starts at a multiple of it (0: any
	// block).
	Alignment int64
	// Granularity: an atomic write's length is a multiple of it (0: any
	// number of blocks).
	Granularity int64
}

// AtomicWriter is implemented by volumes that can write a range atomically:
// after a crash at any instant a read of the range returns either all of
// the old data or all of the new data, never a mix, and no other write to
// an overlapping range interleaves with it (a concurrent overlapping write
// is ordered entirely before or entirely after). target/scsi serves WRITE
// ATOMIC(16) and advertises the atomic fields of the Block Limits VPD page
// only for volumes that implement it with AtomicLimits().MaxBytes > 0.
type AtomicWriter interface {
	AtomicLimits() AtomicLimits
	// WriteAtomic writes p at off atomically. len(p) is within the
	// limits; fua=true returns only when the data is durable. A write
	// that fails leaves the old data.
	WriteAtomic(ctx context.Context, p []byte, off int64, fua bool) error
}

// Unwrapper is implemented by volumes that wrap another one and add
// nothing to its data (admin's latency instrumentation). The optional
// interfaces above are looked up through wrappers with CopierOf and
// AtomicWriterOf, so a wrapper need not restate them.
type Unwrapper interface {
	Unwrap() Volume
}

// maxUnwrap bounds the wrapper chain followed (a cycle is a bug; it must
// not hang the device server).
const maxUnwrap = 8

// CopierOf returns the Copier of v or of a volume v wraps.
func CopierOf(v Volume) (Copier, bool) {
	for range maxUnwrap {
		if c, ok := v.(Copier); ok {
			return c, true
		}
		u, ok := v.(Unwrapper)
		if !ok {
			return nil, false
		}
		v = u.Unwrap()
	}
	return nil, false
}

// AtomicWriterOf returns the AtomicWriter of v or of a volume v wraps.
// Atomic writes then bypass the wrapper (they are not instrumented).
func AtomicWriterOf(v Volume) (AtomicWriter, bool) {
	for range maxUnwrap {
		if w, ok := v.(AtomicWriter); ok {
			return w, true
		}
		u, ok := v.(Unwrapper)
		if !ok {
			return nil, false
		}
		v = u.Unwrap()
	}
	return nil, false
}

// Provisioner is implemented by volumes that know which ranges are
// allocated on their storage (thin provisioning): GET LBA STATUS reports
// it to hosts on thin logical units.
type Provisioner interface {
	// Provisioning reports whether [off, off+run) is mapped (holds
	// data) or deallocated (reads as zeroes without holding any), for
	// the longest run <= n from off with one state. off and n are
	// multiples of the block size; run is one, and at least one block.
	Provisioning(ctx context.Context, off, n int64) (mapped bool, run int64, err error)
}

// ProvisionerOf returns the Provisioner of v or of a volume v wraps.
func ProvisionerOf(v Volume) (Provisioner, bool) {
	for range maxUnwrap {
		if p, ok := v.(Provisioner); ok {
			return p, true
		}
		u, ok := v.(Unwrapper)
		if !ok {
			return nil, false
		}
		v = u.Unwrap()
	}
	return nil, false
}

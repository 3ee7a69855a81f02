package blk

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors. Implementations wrap them with %w and add detail; callers
// test with errors.Is. target/scsi maps each one to a sense key and code.
var (
	// ErrOutOfRange: the request extends past the end of the volume.
	// SCSI: ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
	ErrOutOfRange = errors.New("request beyond end of volume")

	// ErrMisaligned: offset or length is not a multiple of the block size,
	// or a length is invalid. SCSI: ILLEGAL REQUEST / INVALID FIELD IN CDB.
	ErrMisaligned = errors.New("offset or length not block aligned")

	// ErrMedium: the data could not be read or written (backing read error,
	// failed cache holding dirty data). SCSI: MEDIUM ERROR, with
	// UNRECOVERED READ ERROR (11h/00h) for reads and WRITE ERROR (0Ch/00h)
	// for writes.
	ErrMedium = errors.New("medium error")

	// ErrNotReady: the volume is offline (backing device vanished or
	// shrank, volume being removed). SCSI: NOT READY / LOGICAL UNIT NOT
	// READY (04h/xx).
	ErrNotReady = errors.New("volume not ready")

	// ErrMiscompare: COMPARE AND WRITE found different data. Returned
	// wrapped in a *MiscompareError that carries the offset.
	ErrMiscompare = errors.New("miscompare during compare and write")
)

// MiscompareError reports the byte offset, relative to the start of the
// compared range, of the first byte that differed.
type MiscompareError struct {
	Offset int64
}

func (e *MiscompareError) Error() string {
	return fmt.Sprintf("miscompare at byte %d of the compared range", e.Offset)
}

// Is makes errors.Is(err, ErrMiscompare) true for a *MiscompareError.
func (e *MiscompareError) Is(target error) bool { return target == ErrMiscompare }

type streamKey struct{}

// WithStream returns a context that names the I/O stream a request belongs
// to: the initiator port and LUN it came through (for example
// "iqn.1993-08.org.debian:01:abc,i,0x23d000000001/lun0"). The cache engine's
// sequential-cutoff detector tracks streams per name.
func WithStream(ctx context.Context, stream string) context.Context {
	return context.WithValue(ctx, streamKey{}, stream)
}

// Stream returns the stream name set by WithStream, or "" when none is set.
func Stream(ctx context.Context) string {
	s, _ := ctx.Value(streamKey{}).(string)
	return s
}

// Volume is a block volume as the SCSI device server sees it: the one
// interface the engine's volumes implement and every layer above wraps
// (target/scsi.Volume is this type; admin instruments it).
type Volume interface {
	Size() int64
	BlockSize() int
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt with fua=true returns only when the data is durable.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush returns when every write acknowledged before it is durable.
	Flush(ctx context.Context) error
	// Discard invalidates [off, off+n); the range then reads as zeroes.
	Discard(ctx context.Context, off, n int64) error
	// CompareAndWrite atomically compares [off, off+len(compare)) with
	// compare and, only if equal, writes data (same length) there. No other
	// write to the range interleaves. A mismatch returns a
	// *MiscompareError and writes nothing.
	CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error
	// Prefetch promotes [off, off+n) into the cache (PRE-FETCH).
	Prefetch(ctx context.Context, off, n int64) error
}

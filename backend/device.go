package backend

import "context"

// Device is a backing device: the slow, authoritative store behind a cached
// volume. Offsets and lengths are in bytes. Implementations are safe for
// concurrent use; a request either completes (nil), fails with an error
// wrapping one of the internal/blk sentinels where one applies, or returns
// ctx.Err() when its context ends first.
type Device interface {
	// ReadAt fills p from offset off. A read past Size returns an error
	// wrapping blk.ErrOutOfRange.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at offset off. The data is durable only after a
	// later Flush returns nil.
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Flush makes every write that completed before the call durable.
	Flush(ctx context.Context) error
	// Discard tells the device that [off, off+n) is no longer needed. After
	// it returns nil the range reads as zeroes.
	Discard(ctx context.Context, off, n int64) error
	// Size is the device size in bytes.
	Size() int64
	// Close releases the device. Requests after Close fail.
	Close() error
}

package backend

import (
	"errors"
	"fmt"

	"github.com/cachelun/cachelun/internal/blk"
)

// ErrClosed is returned by every request made after Close. It wraps
// blk.ErrNotReady: to a host, a closed backing device is an offline volume.
var ErrClosed = fmt.Errorf("backend: device closed: %w", blk.ErrNotReady)

// ErrReadOnly is returned by writes and discards on a device opened
// read-only.
var ErrReadOnly = errors.New("backend: device is read-only")

// checkRange validates a request of n bytes at off against a device of size
// bytes.
func checkRange(what string, off, n, size int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("backend: %s [%d,+%d): %w", what, off, n, blk.ErrMisaligned)
	}
	if off > size || n > size-off {
		return fmt.Errorf("backend: %s [%d,+%d) past end %d: %w", what, off, n, size, blk.ErrOutOfRange)
	}
	return nil
}

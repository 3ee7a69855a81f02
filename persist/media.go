package persist

import (
	"fmt"
	"log/slog"
)

// MediaKind names the persistence mechanism a Media uses.
type MediaKind string

const (
	// KindDAX: a MAP_SYNC mapping of a DAX file; persist is a cache-line
	// write-back (FlushInstruction: CLWB, CLFLUSHOPT or CLFLUSH) + SFENCE.
	KindDAX MediaKind = "dax"
	// KindMmapMsync: a shared mapping; persist is msync(MS_SYNC) on the
	// page-aligned range.
	KindMmapMsync MediaKind = "mmap-msync"
	// KindPwriteFdatasync: writes with pwrite, reads through a read-only
	// shared mapping, persist is fdatasync (one call covers every waiter).
	KindPwriteFdatasync MediaKind = "pwrite-fdatasync"
	// KindCrash: the crash-simulating in-memory media for tests.
	KindCrash MediaKind = "crash"
)

// The instructions a DAX persist writes cache lines back with on amd64, as
// FlushInstruction names them; each run is followed by SFENCE.
const (
	FlushCLWB       = "clwb"
	FlushCLFLUSHOPT = "clflushopt"
	FlushCLFLUSH    = "clflush"
)

// Media is the byte-addressed cache media. Implementations are safe for
// concurrent use. Offsets and lengths are in bytes; an access outside
// [0, Size()) fails with an error wrapping ErrInvalidArgument.
type Media interface {
	Size() int64
	Kind() MediaKind
	// ReadAt fills p from off. A SIGBUS or I/O error becomes an error
	// wrapping ErrMediaFault.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off. It is not durable until a Persist covering
	// it returns nil.
	WriteAt(p []byte, off int64) error
	// Persist makes [off, off+n) durable before it returns. Concurrent
	// callers share flushes (group commit).
	Persist(off, n int64) error
	Close() error
}

// Span is a byte range of a media.
type Span struct{ Off, N int64 }

// rangesPersister is implemented by media that can make several ranges
// durable with fewer flushes than one Persist per range.
type rangesPersister interface {
	persistRanges(spans []Span) error
}

// wholeFlusher is implemented by media whose Persist may make more than
// its range durable.
type wholeFlusher interface {
	flushCoversMedia() bool
}

// FlushCoversMedia reports whether every Persist on m makes every write to
// m that returned before the Persist began durable, not only its range: an
// fdatasync of a pwrite-fdatasync file does, a cache-line flush (DAX) or an
// msync of a range does not.
func FlushCoversMedia(m Media) bool {
	wf, ok := m.(wholeFlusher)
	return ok && wf.flushCoversMedia()
}

// PersistRanges makes every span durable before it returns, as a Persist
// of each would, but with as few flushes as m allows: on a pwrite-fdatasync
// file one fdatasync covers them all, where consecutive Persist calls would
// each wait for a flush of their own (a Persist needs a flush that starts
// after it is called).
func PersistRanges(m Media, spans []Span) error {
	if rp, ok := m.(rangesPersister); ok {
		return rp.persistRanges(spans)
	}
	for _, sp := range spans {
		if err := m.Persist(sp.Off, sp.N); err != nil {
			return err
		}
	}
	return nil
}

// FileOptions configure OpenFile.
type FileOptions struct {
	// Create creates the file if it does not exist and grows it to Size.
	Create bool
	// Size is the size of a created (or grown) file; 0 keeps the existing size.
	Size int64
	// Kind forces a persistence mechanism (KindMmapMsync or
	// KindPwriteFdatasync); empty means: DAX if the file supports MAP_SYNC,
	// otherwise DefaultFileKind.
	Kind MediaKind
	// ZeroFill writes zeros over the part of the file that Create adds,
	// after reserving it, so every block of the cache file is allocated
	// and written before it is used. Without it the file system marks the
	// blocks unwritten (fallocate) and the first write to each converts
	// it, so every fdatasync of the first pass through the cache also
	// writes the file's block map, synchronously (doc.go, "Media
	// measurements").
	ZeroFill bool
	// ReadOnly opens the file without write access (inspect, check);
	// WriteAt and Persist then fail.
	ReadOnly bool
	// Logger receives one line saying which mechanism was chosen; nil
	// discards.
	Logger *slog.Logger
}

// DefaultFileKind is the non-DAX mechanism OpenFile picks; doc.go gives the
// measurements behind the choice.
const DefaultFileKind = KindPwriteFdatasync

func checkRange(size int64, off, n int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: media range [%d,+%d) outside [0,%d)", ErrInvalidArgument, off, n, size)
	}
	return nil
}

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

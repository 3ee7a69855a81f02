package persist

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers classify with errors.Is; every error returned by
// this package wraps at most one of them and adds the detail (record, offset,
// expected and found values).
var (
	// ErrMediaFault: an I/O error or a SIGBUS on the cache media. The engine
	// retires the cache when it sees one.
	ErrMediaFault = errors.New("persist: cache media fault")

	// ErrNotCachelun: the media holds no cachelun superblock.
	ErrNotCachelun = errors.New("persist: not a cachelun cache file")

	// ErrNewerFormat: the media was written by a newer format version (or
	// uses incompatible feature flags) that this binary cannot read.
	ErrNewerFormat = errors.New("persist: newer on-media format")

	// ErrCorrupt: a record failed its checksum or a bound check.
	ErrCorrupt = errors.New("persist: corrupt cache metadata")

	// ErrTruncated: the media is smaller than its superblock says.
	ErrTruncated = errors.New("persist: cache file truncated")

	// ErrQuarantined: the segment's generation record was unreadable at
	// open, so the segment is never used again (its generation is unknown).
	ErrQuarantined = errors.New("persist: segment quarantined")

	// ErrJournalFull: the segment allocator supplied no free segment.
	ErrJournalFull = errors.New("persist: journal full, no free segment")

	// ErrHoldsDirtyData: Format refused to overwrite a cache file that
	// holds (or may hold) dirty data; FormatOptions.Force overrides.
	ErrHoldsDirtyData = errors.New("persist: cache file holds dirty data")

	// ErrNoSpace: creating or growing a cache file was refused because its
	// file system has too little free space (checked before anything is
	// written), or the space could not be reserved.
	ErrNoSpace = errors.New("persist: not enough free space")

	// ErrInvalidArgument: a caller passed an out-of-range value (segment
	// id, position, key field, option).
	ErrInvalidArgument = errors.New("persist: invalid argument")

	// ErrClosed: the journal or media was used after a fatal error or Close.
	ErrClosed = errors.New("persist: closed")

	// Replay stop reasons (see Replayer.StopReason). ErrEndOfLog means the
	// next slot holds no kset header at all (zeroes or foreign bytes without
	// our magic); the others mean a record with our magic was rejected.
	ErrEndOfLog    = errors.New("persist: end of log")
	ErrBadChecksum = errors.New("persist: checksum mismatch")
	ErrForeignUUID = errors.New("persist: record from another cache")
	ErrLSNGap      = errors.New("persist: LSN discontinuity")
	ErrChainBreak  = errors.New("persist: journal session chain broken")
	ErrBounds      = errors.New("persist: field out of bounds")
	// ErrTornData: an unfenced kset of the unconfirmed tail points at data
	// that did not reach the media (Store.ReplayVerified): the log ends
	// before it.
	ErrTornData = errors.New("persist: kset data did not reach the media")
	// ErrJournalDamaged: replay stopped at a record that had been durable
	// (a later durable kset or the durable mark proves it): damage to the
	// media, not a torn tail. The error is a *DamageError.
	ErrJournalDamaged = errors.New("persist: journal damaged before its known-durable point")
)

// FormatError explains why a media was refused: which record, at which
// absolute media offset, what was expected and what was found. It wraps one
// of ErrNotCachelun, ErrNewerFormat, ErrCorrupt, ErrTruncated or
// ErrMediaFault.
type FormatError struct {
	Record   string // e.g. "superblock slot 0", "key tail (both slots)"
	Offset   int64  // absolute byte offset of the record on the media
	Expected string
	Found    string
	Err      error // the sentinel
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%v: %s at offset %d (0x%x): expected %s, found %s",
		e.Err, e.Record, e.Offset, e.Offset, e.Expected, e.Found)
}

func (e *FormatError) Unwrap() error { return e.Err }

// StopError is what Replayer.StopReason returns: where replay stopped and
// why. It wraps one of the replay stop sentinels (or ErrMediaFault).
type StopError struct {
	Pos    Pos
	LSN    uint64 // the LSN that was expected at Pos
	Detail string
	Err    error
}

func (e *StopError) Error() string {
	return fmt.Sprintf("%v at segment %d offset %d (expecting LSN %d): %s",
		e.Err, e.Pos.Seg, e.Pos.Off, e.LSN, e.Detail)
}

func (e *StopError) Unwrap() error { return e.Err }

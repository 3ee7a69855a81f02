package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// FileFormatOptions configure FormatFile.
type FileFormatOptions struct {
	// Size is the size of a new file, or of an existing one grown or
	// shrunk; 0 keeps an existing file's size (a new file needs one).
	Size int64
	// Format is passed to Format; with Force set, the dirty-data check
	// below is skipped too.
	Format FormatOptions
	// ZeroFill writes zeros over the part of the file that is created
	// (FileOptions.ZeroFill).
	ZeroFill bool
}

// FileFormat describes a file FormatFile formatted.
type FileFormat struct {
	Size       int64
	Superblock Superblock
	DataCRC    bool
	Kind       MediaKind
}

// ErrNoSize refuses to create a cache file without a size.
var ErrNoSize = errors.New("does not exist and no size is given")

// DirtyRefusal is FormatFile refusing an existing cachelun file that holds
// dirty data, or that cannot be read and so may hold some. It wraps
// ErrHoldsDirtyData; Format.Force overrides it.
type DirtyRefusal struct {
	Path string
	// DirtyKeys is the number of dirty keys not written back; 0 when the
	// file could not be read (Err says why).
	DirtyKeys int
	Err       error
}

func (e *DirtyRefusal) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: refusing: existing cachelun file cannot be read (%v) and may hold dirty data", e.Path, e.Err)
	}
	return fmt.Sprintf("%s: refusing: %v: %d dirty keys not written back", e.Path, ErrHoldsDirtyData, e.DirtyKeys)
}

func (e *DirtyRefusal) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrHoldsDirtyData}
	}
	return []error{ErrHoldsDirtyData, e.Err}
}

// FormatFile formats the cache file at path (`cachelun format`), in an
// order that never loses what it must not and never leaves a half-made
// file:
//
//  1. an existing cachelun file that holds dirty data, or cannot be read
//     and so may hold some, is refused (a *DirtyRefusal) unless forced,
//     before it is resized: shrinking it would destroy what the check
//     protects;
//  2. a size below MinMediaSize is refused before anything is created or
//     resized (the file would be left as one that is not a cache file);
//  3. a new file is built by CreateFile (claimed temporary name, free-space
//     check, reserved, zero-filled cancellably with ctx, formatted, renamed
//     into place): a failure leaves no file under either name; an existing
//     file is claimed (OpenFileContext), and one grown for a format that
//     then fails is cut back to its old size while it is still claimed.
//
// Errors name path where the cause does not already.
func FormatFile(ctx context.Context, path string, opts FileFormatOptions) (FileFormat, error) {
	st, statErr := os.Stat(path)
	exists := statErr == nil
	if !exists && opts.Size == 0 {
		return FileFormat{}, fmt.Errorf("%s %w", path, ErrNoSize)
	}
	if exists && !opts.Format.Force {
		if err := checkNotDirty(path); err != nil {
			return FileFormat{}, err
		}
	}
	want := opts.Size
	if want == 0 {
		want = st.Size()
	}
	if minSize := MinMediaSize(opts.Format.SegmentSize); want < minSize {
		seg := opts.Format.SegmentSize
		if seg == 0 {
			seg = DefaultSegmentSize
		}
		return FileFormat{}, fmt.Errorf("%s: %d bytes is too small for a cache: it needs at least 3 segments of %d bytes and the superblock area, %d bytes",
			path, want, seg, minSize)
	}
	fo := FileOptions{Create: true, Size: opts.Size, ZeroFill: opts.ZeroFill, Logger: slog.New(slog.DiscardHandler)}
	var (
		m      Media
		commit func() error
		err    error
	)
	if exists {
		m, err = OpenFileContext(ctx, path, fo)
	} else {
		m, commit, err = CreateFile(ctx, path, fo)
	}
	if err != nil {
		return FileFormat{}, err
	}
	defer m.Close()
	s, err := Format(m, opts.Format)
	if err == nil && commit != nil {
		err = commit()
	}
	if err != nil {
		if exists && opts.Size > st.Size() {
			// Grown for nothing: give the space back while the file is
			// still claimed. (A new file is removed by m.Close.)
			if terr := os.Truncate(path, st.Size()); terr != nil {
				return FileFormat{}, fmt.Errorf("%s: %w (and cutting it back to %d bytes failed: %v)", path, err, st.Size(), terr)
			}
		}
		return FileFormat{}, fmt.Errorf("%s: %w", path, err)
	}
	return FileFormat{Size: m.Size(), Superblock: s.Superblock(), DataCRC: s.DataCRC(), Kind: m.Kind()}, nil
}

// checkNotDirty refuses (a *DirtyRefusal) an existing cachelun file that
// holds dirty data or cannot be read; a file that is not a cachelun file,
// or is empty, passes.
func checkNotDirty(path string) error {
	m, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		if errors.Is(err, ErrInvalidArgument) { // empty file
			return nil
		}
		return err
	}
	defer m.Close()
	s, err := Open(m)
	switch {
	case errors.Is(err, ErrNotCachelun):
		return nil
	case errors.Is(err, ErrMediaFault):
		return fmt.Errorf("%s: %w", path, err)
	case err != nil:
		return &DirtyRefusal{Path: path, Err: err}
	}
	n, err := s.HasDirtyData()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if n > 0 {
		return &DirtyRefusal{Path: path, DirtyKeys: n}
	}
	return nil
}

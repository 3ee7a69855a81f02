package persist_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/persist/persisttest"
)

// FormatFile: a new file is created and formatted; an existing one with
// dirty data is refused (a *DirtyRefusal naming the count) and left as it
// was, and formatted with Force; a failed format of a grown file cuts it
// back; a missing size for a new file is ErrNoSize.
func TestFormatFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "c.img")
	opts := persist.FileFormatOptions{Size: 8 << 20, Format: persist.FormatOptions{SegmentSize: 1 << 20}}
	if _, err := persist.FormatFile(ctx, filepath.Join(dir, "none.img"), persist.FileFormatOptions{}); !errors.Is(err, persist.ErrNoSize) {
		t.Fatalf("no size: %v", err)
	}
	res, err := persist.FormatFile(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != 8<<20 || res.Superblock.SegmentSize != 1<<20 {
		t.Fatalf("formatted %+v", res)
	}
	if k := persist.WritableKind(path, "none"); k != res.Kind {
		t.Fatalf("WritableKind %q, the format opened it as %q", k, res.Kind)
	}

	persisttest.AppendKey(t, path, persist.KeyDirty)
	uuid := res.Superblock.UUID

	var refusal *persist.DirtyRefusal
	_, err = persist.FormatFile(ctx, path, persist.FileFormatOptions{Size: 16 << 20, Format: opts.Format})
	if !errors.As(err, &refusal) || refusal.DirtyKeys != 1 || !errors.Is(err, persist.ErrHoldsDirtyData) {
		t.Fatalf("dirty file: %v", err)
	}
	if st, _ := os.Stat(path); st.Size() != 8<<20 {
		t.Fatalf("refused format resized the file to %d", st.Size())
	}

	// a bad block size fails after the growth: the file gets its size back
	bad := opts.Format
	bad.Force, bad.BlockSize = true, 1000
	if _, err := persist.FormatFile(ctx, path, persist.FileFormatOptions{Size: 16 << 20, Format: bad}); err == nil {
		t.Fatal("block size 1000 accepted")
	}
	if st, _ := os.Stat(path); st.Size() != 8<<20 {
		t.Fatalf("failed format left the file at %d bytes", st.Size())
	}

	forced := opts.Format
	forced.Force = true
	res, err = persist.FormatFile(ctx, path, persist.FileFormatOptions{Format: forced})
	if err != nil {
		t.Fatal(err)
	}
	if res.Superblock.UUID == uuid || res.Size != 8<<20 {
		t.Fatalf("forced format: %+v", res)
	}
}

package backend

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// TestFileProvisioning: a sparse file reports its hole and its data runs;
// a punched range becomes a hole again.
func TestFileProvisioning(t *testing.T) {
	ctx := context.Background()
	f, err := OpenFile(filepath.Join(t.TempDir(), "b"), FileOptions{Create: true, Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mapped, run, err := f.Provisioning(ctx, 0, 8<<20)
	if errors.Is(err, ErrNotTracked) {
		t.Skip("the file system of the temporary directory does not report holes (SEEK_DATA)")
	}
	if err != nil || mapped || run != 8<<20 {
		t.Fatalf("fresh sparse file: mapped %v run %d err %v, want a hole of 8 MiB", mapped, run, err)
	}
	if err := f.WriteAt(ctx, make([]byte, 1<<20), 2<<20); err != nil { // zeroes are data too
		t.Fatal(err)
	}
	for _, c := range []struct {
		off, n, run int64
		mapped      bool
	}{
		{0, 8 << 20, 2 << 20, false},
		{2 << 20, 8<<20 - 2<<20, 1 << 20, true},
		{2<<20 + 4096, 4096, 4096, true},
		{3 << 20, 5 << 20, 5 << 20, false},
	} {
		mapped, run, err := f.Provisioning(ctx, c.off, c.n)
		if err != nil || mapped != c.mapped || run != c.run {
			t.Errorf("Provisioning(%d, %d) = %v, %d, %v; want %v, %d", c.off, c.n, mapped, run, err, c.mapped, c.run)
		}
	}
	if err := f.Discard(ctx, 2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if mapped, run, err := f.Provisioning(ctx, 0, 8<<20); err != nil || mapped || run != 8<<20 {
		t.Errorf("after the discard: mapped %v run %d err %v, want a hole of 8 MiB", mapped, run, err)
	}
}

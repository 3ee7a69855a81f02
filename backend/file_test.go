package backend

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/blk"
)

func TestFileConformanceBuffered(t *testing.T) {
	f, err := OpenFile(filepath.Join(t.TempDir(), "b"), FileOptions{Create: true, Size: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if f.Alignment() != 1 {
		t.Fatalf("buffered alignment %d, want 1", f.Alignment())
	}
	checkDevice(t, f, 512)
}

func TestFileConformanceDirect(t *testing.T) {
	f, err := OpenFile(filepath.Join(t.TempDir(), "d"), FileOptions{Create: true, Size: 2 << 20, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	checkDevice(t, f, f.Alignment())
}

func TestFileDirectBounceAndAlignment(t *testing.T) {
	ctx := context.Background()
	f, err := OpenFile(filepath.Join(t.TempDir(), "d"), FileOptions{Create: true, Size: 4 << 20, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := f.Alignment()
	if a < 512 || a&(a-1) != 0 {
		t.Fatalf("direct alignment %d", a)
	}
	// A buffer at an odd address, larger than one bounce buffer.
	raw := make([]byte, bounceSize+8192+1)
	p := raw[1 : 1+bounceSize+8192]
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	if f.isAligned(p) {
		t.Fatal("test buffer is aligned; the bounce path is not exercised")
	}
	if err := f.WriteAt(ctx, p, 4096); err != nil {
		t.Fatalf("unaligned-buffer write: %v", err)
	}
	rawGot := make([]byte, len(p)+3)
	got := rawGot[3:]
	if err := f.ReadAt(ctx, got, 4096); err != nil {
		t.Fatalf("unaligned-buffer read: %v", err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("bounced read/write lost data")
	}
	if err := f.WriteAt(ctx, make([]byte, a), a/2); !errors.Is(err, blk.ErrMisaligned) {
		t.Errorf("misaligned offset: %v, want ErrMisaligned", err)
	}
	if err := f.ReadAt(ctx, make([]byte, a+1), 0); !errors.Is(err, blk.ErrMisaligned) {
		t.Errorf("misaligned length: %v, want ErrMisaligned", err)
	}
}

func TestFileDiscardPunchesHoles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "p")
	f, err := OpenFile(path, FileOptions{Create: true, Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{0x5A}, 4<<20)
	if err := f.WriteAt(ctx, data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before := allocatedBytes(t, path)
	if err := f.Discard(ctx, 1<<20, 4<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := f.ReadAt(ctx, got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !isZero(got) {
		t.Fatal("discarded range does not read as zeroes")
	}
	if after := allocatedBytes(t, path); after >= before {
		t.Errorf("discard did not release space: %d → %d bytes allocated", before, after)
	}
	// A partial-block discard zeroes exactly the range.
	if err := f.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Discard(ctx, 100, 5000); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 8192)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		want := byte(1)
		if i >= 100 && i < 5100 {
			want = 0
		}
		if b != want {
			t.Fatalf("byte %d = %d after partial discard, want %d", i, b, want)
		}
	}
}

func TestFileWriteZeroesFallback(t *testing.T) {
	ctx := context.Background()
	f, err := OpenFile(filepath.Join(t.TempDir(), "z"), FileOptions{Create: true, Size: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.punch = false // as after EOPNOTSUPP
	if err := f.WriteAt(ctx, bytes.Repeat([]byte{9}, 3<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Discard(ctx, 512, bounceSize+4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3<<20)
	if err := f.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		zero := i >= 512 && i < 512+bounceSize+4096
		if (b == 0) != zero {
			t.Fatalf("byte %d = %d, zero expected: %v", i, b, zero)
		}
	}
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileOpenOptions(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if _, err := OpenFile(path, FileOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open of a missing file without Create: %v", err)
	}
	f, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WriteAt(ctx, []byte("hello"), 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Reopen with a smaller Size: only that much is exposed, data kept.
	f, err = OpenFile(path, FileOptions{Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 4096 {
		t.Fatalf("Size %d, want 4096", f.Size())
	}
	if err := f.ReadAt(ctx, make([]byte, 1), 4096); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("read past Size: %v", err)
	}
	f.Close()
	if st, _ := os.Stat(path); st.Size() != 1<<20 {
		t.Fatalf("file shrank to %d", st.Size())
	}

	// Grow.
	f, err = OpenFile(path, FileOptions{Size: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 2<<20 {
		t.Fatalf("Size %d after growing", f.Size())
	}
	f.Close()

	// Read-only.
	f, err = OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if err := f.ReadAt(ctx, got, 1000); err != nil || string(got) != "hello" {
		t.Fatalf("read-only read: %q, %v", got, err)
	}
	if err := f.WriteAt(ctx, got, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write on read-only: %v", err)
	}
	if err := f.Discard(ctx, 0, 512); !errors.Is(err, ErrReadOnly) {
		t.Errorf("discard on read-only: %v", err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Errorf("flush on read-only: %v", err)
	}
	f.Close()
	if _, err := OpenFile(path, FileOptions{ReadOnly: true, Size: 8 << 20}); !errors.Is(err, blk.ErrOutOfRange) {
		t.Errorf("read-only open asking for more than the file: %v", err)
	}
	if _, err := OpenFile(dir, FileOptions{ReadOnly: true}); err == nil {
		t.Error("opening a directory succeeded")
	}
}

func TestFileTruncatedUnderneathIsMediumError(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "t")
	f, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.ReadAt(ctx, make([]byte, 4096), 8192); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("read beyond a truncated file: %v, want ErrMedium", err)
	}
}

// TestFileBlockDevice runs the conformance checks on a loop device, which
// exercises BLKGETSIZE64, BLKSSZGET and discard on a block device. It needs
// root and losetup.
func TestFileBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for losetup")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed")
	}
	img := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 4<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("losetup failed (no loop devices here?): %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })

	for _, direct := range []bool{false, true} {
		f, err := OpenFile(loop, FileOptions{Direct: direct})
		if err != nil {
			t.Fatal(err)
		}
		if f.Size() != 4<<20 {
			t.Fatalf("block device size %d, want %d", f.Size(), 4<<20)
		}
		// An earlier pass left data behind; clear it so the device is
		// zero-filled again.
		if err := f.Discard(context.Background(), 0, f.Size()); err != nil {
			t.Fatal(err)
		}
		checkDevice(t, f, max(f.Alignment(), 512))
	}
	if _, err := OpenFile(loop, FileOptions{Size: 8 << 20}); !errors.Is(err, blk.ErrOutOfRange) {
		t.Errorf("asking for more than the block device has: %v", err)
	}
}

package backend

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cachelun/cachelun/internal/flock"
)

// A backing file one open holds is refused to a second one with the path
// and the holder's pid, before the second open changes anything (its
// larger Size would extend the file).
func TestOpenFileRefusesHeldBackingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "backing.img")
	f, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, opts := range []FileOptions{{}, {ReadOnly: true}, {Size: 2 << 20}} {
		_, err := OpenFile(path, opts)
		if !errors.Is(err, flock.ErrLocked) {
			t.Fatalf("%+v: %v, want flock.ErrLocked", opts, err)
		}
		for _, want := range []string{"backing file " + path, "pid " + strconv.Itoa(os.Getpid())} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("%+v: %q does not name %q", opts, err, want)
			}
		}
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 1<<20 {
		t.Fatalf("held file changed: %v %v", st.Size(), err)
	}
	f.Close()
	g, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	g.Close()
}

// A block device is opened with O_EXCL: a second opener is refused (the
// kernel's EBUSY) with the holder's pid from its flock claim.
func TestOpenFileClaimsBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if err := exec.Command("losetup", "-d", dev).Run(); err != nil {
			t.Errorf("losetup -d %s: %v", dev, err)
		}
	})
	f, err := OpenFile(dev, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// the kernel's claim, which mounts and other programs respect too
	if h, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_EXCL, 0); err == nil {
		h.Close()
		t.Fatalf("%s opened with O_EXCL while the backend holds it", dev)
	}
	_, err = OpenFile(dev, FileOptions{})
	f.Close()
	if !errors.Is(err, flock.ErrLocked) {
		t.Fatalf("second open of %s: %v, want flock.ErrLocked", dev, err)
	}
	for _, want := range []string{"backing block device " + dev, "pid " + strconv.Itoa(os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("%q does not name %q", err, want)
		}
	}
	g, err := OpenFile(dev, FileOptions{})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	g.Close()
}

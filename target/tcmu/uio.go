package tcmu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// uioFile is an opened and mapped /dev/uio<N> of a TCMU device.
type uioFile struct {
	fd   int
	efd  int // eventfd that stop signals to end wait
	mm   []byte
	once sync.Once
}

// openUIO opens /dev/uio<minor> and maps the device's whole region (mailbox,
// command ring and data area), whose size sysfs publishes.
func openUIO(devDir, sysUIO string, minor uint32) (*uioFile, error) {
	sizePath := filepath.Join(sysUIO, fmt.Sprintf("uio%d", minor), "maps", "map0", "size")
	size, err := readUint(sizePath)
	if err != nil {
		return nil, fmt.Errorf("tcmu: read mapping size: %w", err)
	}
	if size < mbSize || size > 1<<40 {
		return nil, fmt.Errorf("tcmu: %s says the mapping is %d bytes", sizePath, size)
	}
	path := filepath.Join(devDir, fmt.Sprintf("uio%d", minor))
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tcmu: open %s: %w", path, err)
	}
	mm, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tcmu: map %s (%d bytes): %w", path, size, err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Munmap(mm)
		unix.Close(fd)
		return nil, fmt.Errorf("tcmu: eventfd: %w", err)
	}
	return &uioFile{fd: fd, efd: efd, mm: mm}, nil
}

// wait blocks until the kernel raised the device's interrupt (new entries
// in the ring) or stop was called.
func (u *uioFile) wait() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}, {Fd: int32(u.efd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("tcmu: poll uio: %w", err)
		}
		if fds[1].Revents != 0 {
			return true, nil
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return false, fmt.Errorf("tcmu: uio device gone (poll events %#x)", fds[0].Revents)
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			var b [4]byte
			if _, err := unix.Read(u.fd, b[:]); err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				return false, fmt.Errorf("tcmu: read uio: %w", err)
			}
			return false, nil
		}
	}
}

// kick makes the kernel process completions (uio irqcontrol write).
func (u *uioFile) kick() error {
	b := [4]byte{1}
	_, err := unix.Write(u.fd, b[:])
	return err
}

func (u *uioFile) stop() {
	b := [8]byte{1}
	_, _ = unix.Write(u.efd, b[:])
}

func (u *uioFile) close() error {
	var err error
	u.once.Do(func() {
		err = errors.Join(unix.Munmap(u.mm), unix.Close(u.fd), unix.Close(u.efd))
	})
	return err
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", path, s)
	}
	return v, nil
}

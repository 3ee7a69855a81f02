package flock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLocked is wrapped by every refused claim: another open file
// description (another process, or another open in this one) holds the
// file.
var ErrLocked = errors.New("locked")

// Mode is the kind of claim.
type Mode int

const (
	// Exclusive excludes every other claim: a daemon, format, repair.
	Exclusive Mode = iota
	// Shared excludes exclusive claims only: read-only commands, which may
	// run side by side but never while a daemon owns the file.
	Shared
)

// Lock claims the open file fd without waiting. what and path name the
// file in the refusal ("cache file", "/x/cache.img").
func Lock(fd int, mode Mode, what, path string) error {
	how := unix.LOCK_EX
	if mode == Shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return refusal(fd, what, path)
		default:
			return fmt.Errorf("flock %s %s: %w", what, path, err)
		}
	}
}

// refusal is the ErrLocked error for the file fd, naming its holder when
// /proc/locks does.
func refusal(fd int, what, path string) error {
	pid, ok := Holder(fd)
	if !ok {
		return fmt.Errorf("%w: %s %s is in use by another process (pid unknown); a second process must not open it", ErrLocked, what, path)
	}
	holder := "pid " + strconv.Itoa(pid)
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		holder += ", " + strings.TrimSpace(string(comm))
	}
	return fmt.Errorf("%w: %s %s is in use by another process (%s); a second process must not open it", ErrLocked, what, path, holder)
}

// Holder returns the pid of a process holding a flock lock on the file fd
// is open on, as /proc/locks reports it. ok is false when no lock is
// listed or the holder is not visible from this pid namespace. When
// several processes share a lock, it returns one of them other than the
// caller if there is one.
func Holder(fd int) (pid int, ok bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, false
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	return holderIn(bufio.NewScanner(f), uint64(unix.Major(st.Dev)), uint64(unix.Minor(st.Dev)), st.Ino, os.Getpid())
}

// holderIn scans /proc/locks lines ("1: FLOCK  ADVISORY  WRITE 1234
// fe:00:5326791 0 EOF"; waiters are "1: -> FLOCK ...") for a granted flock
// lock on the inode; it prefers a pid other than self.
func holderIn(sc *bufio.Scanner, major, minor, ino uint64, self int) (int, bool) {
	found := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] != "FLOCK" {
			continue // a POSIX or OFD lock, or a waiter ("->")
		}
		id := strings.Split(f[5], ":")
		if len(id) != 3 {
			continue
		}
		ma, err1 := strconv.ParseUint(id[0], 16, 32)
		mi, err2 := strconv.ParseUint(id[1], 16, 32)
		in, err3 := strconv.ParseUint(id[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || ma != major || mi != minor || in != ino {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 {
			continue
		}
		if pid != self {
			return pid, true
		}
		found = pid
	}
	return found, found > 0
}

// maxOpenRetries bounds OpenLocked's retries when the file it claimed was
// unlinked or replaced between its open and its claim.
const maxOpenRetries = 8

// OpenLocked opens path (flag as for os.OpenFile, O_CREATE allowed) and
// claims it. After the claim it checks that path still names the inode it
// claimed; if the holder it raced with removed or replaced the file, it
// opens the new one. The caller owns the claim until it closes the file.
func OpenLocked(path string, flag int, perm os.FileMode, mode Mode, what string) (*os.File, error) {
	for range maxOpenRetries {
		f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, perm)
		if err != nil {
			return nil, err
		}
		if err := Lock(int(f.Fd()), mode, what, path); err != nil {
			f.Close()
			return nil, err
		}
		same, err := namesInode(f, path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			f.Close()
			return nil, err
		}
		if same {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("flock %s %s: removed or replaced by another process %d times while it was opened", what, path, maxOpenRetries)
}

// namesInode reports whether path names the inode f is open on.
func namesInode(f *os.File, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Stat(path, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, os.ErrNotExist
		}
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// LockFile is the lock file of a directory's state (a daemon's data
// directory): held exclusively for the life of the process that owns the
// directory, and holding that process's pid for people reading it. The
// file is never removed: removing a lock file while another process has it
// open would let two processes each hold a claim on a different inode.
type LockFile struct {
	f *os.File
}

// CreateLockFile claims the lock file at path (created if needed) for this
// process and writes its pid into it. A refusal wraps ErrLocked and names
// the holder.
func CreateLockFile(path, what string) (*LockFile, error) {
	f, err := OpenLocked(path, os.O_RDWR|os.O_CREATE, 0o644, Exclusive, what)
	if err != nil {
		return nil, err
	}
	// Only the holder writes the file, so a reader of a file it cannot
	// claim sees the holder's pid.
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	return &LockFile{f: f}, nil
}

// Close releases the claim. The file stays.
func (l *LockFile) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

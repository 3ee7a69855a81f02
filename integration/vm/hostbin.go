package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HostBinary returns Initramfs.Files entries that make the host's
// dynamically linked program at path run in a busybox guest: the program
// at the same path, every shared library ldd lists at the path the loader
// looks for it, and the loader itself. The guest kernel is older than or as
// old as any the host's C library supports (Debian's), so the host's
// binaries run there as they are.
func HostBinary(path string) (map[string]string, error) {
	out, err := run("", nil, "ldd", path)
	if err != nil {
		return nil, fmt.Errorf("vm: libraries of %s: %w", path, err)
	}
	files := map[string]string{path: path}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			// libext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x...)
			files[f[2]] = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			// the loader: /lib64/ld-linux-x86-64.so.2 (0x...)
			files[f[0]] = f[0]
		}
	}
	for guest, host := range files {
		// copyFile follows symlinks: the guest gets the file itself.
		if _, err := os.Stat(host); err != nil {
			return nil, fmt.Errorf("vm: %s needs %s: %w", path, guest, err)
		}
	}
	return files, nil
}

// GuestMke2fs returns Initramfs.Files entries for e2fsprogs' mke2fs (busybox's
// makes no ext4), installing e2fsprogs on the host first if it is missing
// (as root, with apt-get; otherwise the error says what to install). The
// guest runs it as /usr/sbin/mke2fs.
func GuestMke2fs() (map[string]string, error) {
	if err := EnsureHost(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("mke2fs"); err != nil {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("vm: mke2fs missing and not root to install it: run apt-get install -y --no-install-recommends e2fsprogs")
		}
		if err := aptInstall("e2fsprogs"); err != nil {
			return nil, err
		}
	}
	p, err := exec.LookPath("mke2fs")
	if err != nil {
		return nil, fmt.Errorf("vm: mke2fs still missing after installing e2fsprogs: %w", err)
	}
	p, err = filepath.EvalSymlinks(p)
	if err != nil {
		return nil, err
	}
	files, err := HostBinary(p)
	if err != nil {
		return nil, err
	}
	if p != "/usr/sbin/mke2fs" {
		delete(files, p)
		files["/usr/sbin/mke2fs"] = p
	}
	// Without its profile mke2fs falls back to built-in defaults; with it
	// the guest's ext4 has the host's (Debian's) feature set.
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		files["/etc/mke2fs.conf"] = "/etc/mke2fs.conf"
	}
	return files, nil
}

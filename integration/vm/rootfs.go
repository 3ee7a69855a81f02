package vm

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// RootfsPackages are installed into the Debian guest of tiers 2 and 4: LIO
// userland (targetcli), the iSCSI initiator, the system bus targetcli needs
// to find user: handlers, dm-multipath (multipathd and its udev) for tier
// 4, and the tools the guest scripts use.
func RootfsPackages() []string {
	return []string{"targetcli-fb", "python3-rtslib-fb", "open-iscsi", "dbus", "kmod", "e2fsprogs",
		"util-linux", "procps", "iproute2", "sg3-utils", "multipath-tools"}
}

// rootfsTarball is the cached tarball's name. It carries a digest of the
// package list: a cache built before a package was added is not reused (its
// guests would lack the package), and an older tree's cache stays valid for
// that tree.
func rootfsTarball(cacheDir string) string {
	sum := sha256.Sum256([]byte(strings.Join(RootfsPackages(), "\n")))
	return filepath.Join(cacheDir, fmt.Sprintf("rootfs-bookworm-%x.tar", sum[:6]))
}

// Rootfs is a cached Debian bookworm tree (as a tarball) for tier-2 guests.
type Rootfs struct {
	Tarball string
	// BuildTime is how long mmdebstrap took (0 when cached).
	BuildTime time.Duration
}

// PrepareRootfs builds the Debian rootfs tarball with mmdebstrap once and
// caches it.
func PrepareRootfs(cacheDir string) (*Rootfs, error) {
	if err := EnsureHost(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("vm: mmdebstrap missing and not root to install it (apt-get install mmdebstrap)")
		}
		if err := aptInstall("mmdebstrap"); err != nil {
			return nil, err
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if err := aptInstall("e2fsprogs"); err != nil {
			return nil, err
		}
	}
	// A lock of its own: the slow rootfs build must not hold up tier-1
	// guests that only need the kernel.
	unlock, err := lockDir(filepath.Join(cacheDir, "rootfs-lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	tarball := rootfsTarball(cacheDir)
	r := &Rootfs{Tarball: tarball}
	if _, err := os.Stat(tarball); err == nil {
		return r, nil
	}
	start := time.Now()
	tmp := tarball + ".tmp"
	args := []string{"--format=tar", "--variant=minbase", "--include=" + strings.Join(RootfsPackages(), ","),
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"bookworm", tmp, "http://deb.debian.org/debian"}
	if _, err := run("", aptEnv(), "mmdebstrap", args...); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("vm: build Debian rootfs: %w", err)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		return nil, err
	}
	r.BuildTime = time.Since(start)
	return r, nil
}

// RootDisk describes an ext4 root image made from the rootfs.
type RootDisk struct {
	// Modules are installed (with dependencies) into the image's
	// /lib/modules so modprobe inside the guest finds them.
	Modules []string
	// Files maps guest paths to host files.
	Files map[string]string
	// SizeMB is the image size; default 1536.
	SizeMB int
}

// BuildRootDisk unpacks the rootfs, adds modules and files, and writes an
// ext4 image to out.
func (a *Assets) BuildRootDisk(r *Rootfs, spec RootDisk, out string) error {
	stage, err := os.MkdirTemp("", "cachelun-rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if _, err := run("", nil, "tar", "-C", stage, "-xf", r.Tarball); err != nil {
		return fmt.Errorf("vm: unpack rootfs: %w", err)
	}
	if err := a.stageModules(stage, spec.Modules); err != nil {
		return err
	}
	for guest, host := range spec.Files {
		st, err := os.Stat(host)
		if err != nil {
			return err
		}
		dst := filepath.Join(stage, filepath.Clean("/"+guest))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(host, dst, st.Mode().Perm()); err != nil {
			return err
		}
	}
	if err := installGuestDiag(stage); err != nil {
		return err
	}
	// minbase has no machine id; dbus-daemon refuses to start without one.
	if err := os.WriteFile(filepath.Join(stage, "etc", "machine-id"), []byte("0123456789abcdef0123456789abcdef\n"), 0o444); err != nil {
		return err
	}
	size := spec.SizeMB
	if size == 0 {
		size = 1536
	}
	os.Remove(out)
	if _, err := run("", nil, "mkfs.ext4", "-q", "-F", "-L", "root", "-d", stage, out, fmt.Sprintf("%dM", size)); err != nil {
		return fmt.Errorf("vm: make root image: %w", err)
	}
	return nil
}

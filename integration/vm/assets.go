package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Assets are the extracted Debian packages a guest is built from.
type Assets struct {
	KernelVersion string
	// VMLinuz is the kernel image.
	VMLinuz string
	// Modules is lib/modules/<version> with a modules.dep.
	Modules string
	// Busybox is the static busybox binary.
	Busybox string
	// PrepareTime is how long downloading and extracting took (0 when
	// everything was cached).
	PrepareTime time.Duration
}

// Prepare downloads (apt-get download) and extracts the kernel and
// busybox-static packages into cacheDir, once; later calls reuse them.
func Prepare(cacheDir string) (*Assets, error) {
	if err := EnsureHost(); err != nil {
		return nil, err
	}
	kver := KernelVersion()
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("vm: lock cache %s: %w", cacheDir, err)
	}
	defer unlock()
	root := filepath.Join(cacheDir, kver)
	a := &Assets{
		KernelVersion: kver,
		VMLinuz:       filepath.Join(root, "kpkg", "boot", "vmlinuz-"+kver),
		Modules:       filepath.Join(root, "kpkg", "lib", "modules", kver),
		Busybox:       filepath.Join(cacheDir, "busybox", "bin", "busybox"),
	}
	ready := filepath.Join(root, ".ready")
	if _, err := os.Stat(ready); err == nil {
		return a, nil
	}
	start := time.Now()
	debs := filepath.Join(cacheDir, "debs")
	kernelPkg := "linux-image-" + kver
	kdeb, err := download(debs, kernelPkg)
	if err != nil {
		return nil, err
	}
	bdeb, err := download(debs, "busybox-static")
	if err != nil {
		return nil, err
	}
	for _, d := range []string{filepath.Join(root, "kpkg"), filepath.Join(cacheDir, "busybox")} {
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if _, err := run("", nil, "dpkg-deb", "-x", kdeb, filepath.Join(root, "kpkg")); err != nil {
		return nil, fmt.Errorf("vm: extract %s: %w", kdeb, err)
	}
	if _, err := run("", nil, "dpkg-deb", "-x", bdeb, filepath.Join(cacheDir, "busybox")); err != nil {
		return nil, fmt.Errorf("vm: extract %s: %w", bdeb, err)
	}
	// The package ships no modules.dep (its postinst makes one).
	if _, err := run("", nil, "depmod", "-b", filepath.Join(root, "kpkg"), kver); err != nil {
		return nil, fmt.Errorf("vm: depmod: %w", err)
	}
	for _, p := range []string{a.VMLinuz, filepath.Join(a.Modules, "modules.dep"), a.Busybox} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("vm: prepared tree lacks %s: %w", p, err)
		}
	}
	if err := os.WriteFile(ready, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return nil, err
	}
	a.PrepareTime = time.Since(start)
	return a, nil
}

// download fetches pkg's .deb into dir (unless present) and returns its path.
func download(dir, pkg string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	if p := find(); p != "" {
		return p, nil
	}
	if _, err := run(dir, aptEnv(), "apt-get", "download", pkg); err != nil {
		if _, uerr := run("", aptEnv(), "apt-get", "update"); uerr != nil {
			return "", fmt.Errorf("vm: apt-get download %s failed (%v) and apt-get update failed: %w", pkg, err, uerr)
		}
		if _, err := run(dir, aptEnv(), "apt-get", "download", pkg); err != nil {
			return "", fmt.Errorf("vm: apt-get download %s (is a Debian bookworm mirror reachable? set CACHELUN_VM_KERNEL for another kernel ABI): %w", pkg, err)
		}
	}
	p := find()
	if p == "" || strings.HasSuffix(p, ".partial") {
		return "", fmt.Errorf("vm: apt-get download %s left no .deb in %s", pkg, dir)
	}
	return p, nil
}

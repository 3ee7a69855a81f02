package vm

import (
	"bufio"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// guestDiag is installed as GuestDiagPath in every initramfs and root disk:
// shell functions that print the guest's diagnostics when it fails or hangs.
//
//go:embed guestdiag.sh
var guestDiag string

// GuestDiagPath is where guests find the diagnostics functions (t, pass,
// fail, vm_diag, vm_watchdog_start; see guestdiag.sh).
const GuestDiagPath = "/etc/vm-diag.sh"

// installGuestDiag writes the diagnostics functions into a staged root.
func installGuestDiag(stage string) error {
	dst := filepath.Join(stage, GuestDiagPath)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, []byte(guestDiag), 0o644)
}

// Initramfs describes a guest root filesystem held in RAM.
type Initramfs struct {
	// Init is the /init script (PID 1), run by busybox sh.
	Init string
	// Modules are kernel modules to include with everything they depend
	// on (names as modprobe takes them); built-in ones are skipped.
	Modules []string
	// Files maps guest paths to host files copied in (mode kept).
	Files map[string]string
}

// Build writes the initramfs as a gzip'd newc cpio archive to out.
func (a *Assets) Build(spec Initramfs, out string) error {
	stage, err := os.MkdirTemp("", "cachelun-initramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "mnt", "run", "root", "newroot"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(a.Busybox, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	list, err := run("", nil, a.Busybox, "--list")
	if err != nil {
		return fmt.Errorf("vm: list busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(stage, "bin", applet)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	// The kernel runs /sbin/modprobe for request_module (crc32c for ext4,
	// LIO backends).
	if err := os.Symlink("/bin/busybox", filepath.Join(stage, "sbin", "modprobe")); err != nil {
		return err
	}
	if err := a.stageModules(stage, spec.Modules); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(spec.Init), 0o755); err != nil {
		return err
	}
	if err := installGuestDiag(stage); err != nil {
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
	return writeCPIO(stage, out)
}

// stageModules copies the named modules and their dependencies (from
// modules.dep) and indexes them with depmod.
func (a *Assets) stageModules(stage string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	dep, err := os.Open(filepath.Join(a.Modules, "modules.dep"))
	if err != nil {
		return err
	}
	defer dep.Close()
	byName := map[string][]string{}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		byName[moduleName(mod)] = append([]string{mod}, strings.Fields(deps)...)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	builtin, _ := os.ReadFile(filepath.Join(a.Modules, "modules.builtin"))
	need := map[string]bool{}
	for _, n := range names {
		files, ok := byName[moduleName(n)]
		if !ok {
			if strings.Contains(string(builtin), "/"+strings.ReplaceAll(n, "-", "_")+".ko") ||
				strings.Contains(string(builtin), "/"+strings.ReplaceAll(n, "_", "-")+".ko") {
				continue
			}
			return fmt.Errorf("vm: kernel %s has no module %q", a.KernelVersion, n)
		}
		for _, f := range files {
			need[f] = true
		}
	}
	dst := filepath.Join(stage, "lib", "modules", a.KernelVersion)
	for f := range need {
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(f)), 0o755); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(a.Modules, f), filepath.Join(dst, f), 0o644); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if err := copyFile(filepath.Join(a.Modules, f), filepath.Join(dst, f), 0o644); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if _, err := run("", nil, "depmod", "-b", stage, a.KernelVersion); err != nil {
		return fmt.Errorf("vm: depmod for the initramfs: %w", err)
	}
	return nil
}

// moduleName normalises a module path or name the way modprobe does.
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(s, ext) {
			s = strings.TrimSuffix(s, ext)
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeCPIO archives the tree at root in the kernel's initramfs format
// (newc cpio, gzip).
func writeCPIO(root, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		f.Close()
		return err
	}
	w := &cpioWriter{w: bufio.NewWriterSize(zw, 1<<20)}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return w.entry(rel, 0o040000|uint32(info.Mode().Perm()), nil)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return w.entry(rel, 0o120777, []byte(target))
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return w.entry(rel, 0o100000|uint32(info.Mode().Perm()), data)
		}
		return nil
	})
	if err == nil {
		err = w.entry("TRAILER!!!", 0, nil)
	}
	if err == nil {
		err = w.w.Flush()
	}
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) error {
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	if _, err := c.w.WriteString(hdr + name + "\x00"); err != nil {
		return err
	}
	if err := c.pad(len(hdr) + len(name) + 1); err != nil {
		return err
	}
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	return c.pad(len(data))
}

func (c *cpioWriter) pad(n int) error {
	if r := n % 4; r != 0 {
		_, err := c.w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

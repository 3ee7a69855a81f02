package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// Kernel is the pinned Debian kernel ABI the tests boot.
const Kernel = "6.1.0-56-amd64"

// KernelVersion returns the kernel ABI to use: CACHELUN_VM_KERNEL or Kernel.
func KernelVersion() string {
	if v := os.Getenv("CACHELUN_VM_KERNEL"); v != "" {
		return v
	}
	return Kernel
}

// CacheDir returns the download cache: CACHELUN_VM_CACHE, or cache/ next to
// this package's source.
func CacheDir() string {
	if d := os.Getenv("CACHELUN_VM_CACHE"); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join(os.TempDir(), "cachelun-vm-cache")
	}
	return filepath.Join(filepath.Dir(file), "cache")
}

// hostTools maps each host command the harness needs to its Debian package.
func hostTools() [][2]string {
	return [][2]string{
		{"qemu-system-x86_64", "qemu-system-x86"},
		{"depmod", "kmod"},
		{"dpkg-deb", "dpkg"},
		{"apt-get", "apt"},
	}
}

// EnsureHost checks that the host can run VM tests and installs missing
// Debian packages (as root, with apt-get). The error says exactly what is
// missing and why it could not be fixed.
func EnsureHost() error {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return fmt.Errorf("vm: needs linux/amd64 (qemu TCG boot of a Debian amd64 kernel), have %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	var missing []string
	for _, t := range hostTools() {
		if _, err := exec.LookPath(t[0]); err != nil {
			missing = append(missing, t[1])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("vm: missing host packages %s and not root to install them: run apt-get install -y --no-install-recommends %s",
			strings.Join(missing, " "), strings.Join(missing, " "))
	}
	if err := aptInstall(missing...); err != nil {
		return err
	}
	for _, t := range hostTools() {
		if _, err := exec.LookPath(t[0]); err != nil {
			return fmt.Errorf("vm: %s still missing after installing %s", t[0], t[1])
		}
	}
	return nil
}

// aptLockWait makes apt-get wait this long for the dpkg lock another
// apt-get holds (the VM tests run in parallel and may install at once)
// instead of failing at once.
const aptLockWait = "DPkg::Lock::Timeout=600"

func aptInstall(pkgs ...string) error {
	args := append([]string{"-o", aptLockWait, "install", "-y", "--no-install-recommends"}, pkgs...)
	if _, err := run("", aptEnv(), "apt-get", args...); err != nil {
		// Stale or missing package lists are the usual cause.
		if _, uerr := run("", aptEnv(), "apt-get", "-o", aptLockWait, "update"); uerr != nil {
			return fmt.Errorf("vm: apt-get update: %w", uerr)
		}
		if _, err := run("", aptEnv(), "apt-get", args...); err != nil {
			return fmt.Errorf("vm: apt-get install %s: %w", strings.Join(pkgs, " "), err)
		}
	}
	return nil
}

func aptEnv() []string { return append(os.Environ(), "DEBIAN_FRONTEND=noninteractive") }

// run executes a command and returns its stdout; the error carries stderr.
func run(dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// lockDir takes an exclusive flock on dir/.lock until unlock is called.
func lockDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// BuildGo builds a static binary of the main package pkg (an import path
// of this module) into out.
func BuildGo(pkg, out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("vm: the go command is needed to build guest binaries: %w", err)
	}
	_, file, _, _ := runtime.Caller(0)
	env := append(os.Environ(), "CGO_ENABLED=0")
	if _, err := run(filepath.Dir(file), env, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg); err != nil {
		return fmt.Errorf("vm: build %s: %w", pkg, err)
	}
	return nil
}

// BuildDaemon builds the cachelun binary (static) to out, or copies the one
// named by CACHELUN_VM_BINARY (a prebuilt static binary, e.g. from a CI
// build step) when that is set.
func BuildDaemon(out string) error {
	if prebuilt := os.Getenv("CACHELUN_VM_BINARY"); prebuilt != "" {
		if err := copyFile(prebuilt, out, 0o755); err != nil {
			return fmt.Errorf("vm: CACHELUN_VM_BINARY: %w", err)
		}
		return nil
	}
	return BuildGo("github.com/cachelun/cachelun/cmd/cachelun", out)
}

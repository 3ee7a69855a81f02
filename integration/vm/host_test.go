package vm

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestAptInstallWaitsForTheLock: installs started at once (the VM tests
// run in parallel) wait for one another instead of failing on the dpkg
// lock. The apt-get on PATH here behaves as apt-get does with the lock:
// it fails at once when another holds it, unless DPkg::Lock::Timeout is
// set, then it waits; each holds the lock for half a second.
func TestAptInstallWaitsForTheLock(t *testing.T) {
	dir := t.TempDir()
	lock, calls := filepath.Join(dir, "lock"), filepath.Join(dir, "calls")
	script := `#!/bin/sh
wait=-n
for a in "$@"; do
	case "$a" in DPkg::Lock::Timeout=*) wait="-w ${a#DPkg::Lock::Timeout=}";; esac
done
exec 9>` + lock + `
flock $wait 9 || { echo "E: Could not get lock $0" >&2; exit 100; }
echo "$*" >>` + calls + `
sleep 0.5
`
	if err := os.WriteFile(filepath.Join(dir, "apt-get"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	const n = 3
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = aptInstall("qemu-system-x86")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("install %d: %v", i, err)
		}
	}
	got, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(got), " install "); lines != n {
		t.Fatalf("apt-get ran %d installs, want %d:\n%s", lines, n, got)
	}
}

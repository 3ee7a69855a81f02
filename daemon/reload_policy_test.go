package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// policyConfig is reloadConfig's volume v0 on a backing file three times
// its 16 MiB cache, every read cached (no sequential cutoff), with policy
// as its cache_policy ("" leaves the default).
func policyConfig(dir, policy string) string {
	vol := "mode = \"writeback\"\nsequential_cutoff = \"0\"\n"
	if policy != "" {
		vol += "cache_policy = \"" + policy + "\"\n"
	}
	s := reloadConfig(dir, "info", "writeback", false, "")
	s = strings.Replace(s, "backing_size = \"8MiB\"\n", "backing_size = \"48MiB\"\n", 1)
	return strings.Replace(s, "mode = \"writeback\"\n", vol, 1)
}

// A reload switches a volume's cache_policy live: on a full cache the
// default 2q refuses read misses it has never seen, fifo admits every one,
// and 2q refuses again once reloaded back.
func TestReloadSwitchesCachePolicy(t *testing.T) {
	d, p := startReloadDaemonWith(t, func(dir string) string { return policyConfig(dir, "") })
	dir := filepath.Dir(p)
	ctx := context.Background()
	v0, ok := d.eng.cacheVolume("v0")
	if !ok {
		t.Fatal("v0 not open")
	}

	// readEvery reads the 4 KiB block at sub into every 64 KiB of
	// [from, to) MiB of v0 (not a sequential stream) and returns how many
	// of its misses the policy refused.
	buf := make([]byte, 4096)
	readEvery := func(from, to, sub int64) uint64 {
		t.Helper()
		before := v0.Stats().AdmissionsRefused
		for off := from<<20 + sub; off < to<<20; off += 64 << 10 {
			if err := v0.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
		}
		return v0.Stats().AdmissionsRefused - before
	}
	// Fill the cache: 12 MiB of 4 KiB blocks takes it past GC's
	// threshold, where 2q starts refusing.
	pass := int64(0)
	for ; readEvery(0, 48, pass<<12) == 0; pass++ {
		if pass == 8 {
			t.Fatal("2q refused no miss in 8 passes over three times the cache")
		}
	}
	// From here on every read is of a block no pass above read: the last
	// 4 KiB of each 64 KiB.
	const unread = 60 << 10
	if got := readEvery(0, 16, unread); got == 0 {
		t.Fatal("2q on a full cache refused none of 256 misses of blocks it never saw")
	}

	writeFile(t, p, policyConfig(dir, "fifo"))
	plan, err := d.reload(ctx, false)
	if err != nil {
		t.Fatalf("reload to fifo: %v", err)
	}
	if !strings.Contains(plan, "cache_policy modified 2q -> fifo") {
		t.Errorf("plan lacks the policy change:\n%s", plan)
	}
	if got := readEvery(16, 32, unread); got != 0 {
		t.Errorf("fifo refused %d misses", got)
	}

	writeFile(t, p, policyConfig(dir, "2q"))
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("reload to 2q: %v", err)
	}
	if got := readEvery(32, 48, unread); got == 0 {
		t.Error("2q again: refused none of 256 misses")
	}
}

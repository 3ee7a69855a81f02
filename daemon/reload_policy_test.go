package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/internal/tracebench"
)

// policyConfig is reloadConfig's volume v0 on a backing file three times
// its 16 MiB cache, with policy as its cache_policy ("" leaves the
// default). No read bypasses the cache: no sequential cutoff, and no
// latency-based congestion bypass (on a busy machine a slow backing read
// would make the next ones bypass, neither filled nor refused).
func policyConfig(dir, policy string) string {
	vol := "mode = \"writeback\"\nsequential_cutoff = \"0\"\ncongested_read_threshold = \"0s\"\n"
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
	oc, ok2 := d.eng.cache("c0")
	if !ok || !ok2 {
		t.Fatal("v0 or c0 not open")
	}

	// onTime does what the daemon's timers would between a host's
	// commands, which here come faster than any of them: once the cache
	// is past GC's threshold, it runs the background work (tracebench's
	// CatchUp: ksets committed, writeback, GC) until it is under it again.
	// Without it a full cache bypasses the reads, neither filled nor
	// refused.
	onTime := func() {
		t.Helper()
		c := oc.cache
		over := func() bool { return tracebench.GCThresholdPassed(c) }
		if !over() {
			return
		}
		if err := tracebench.CatchUp(ctx, c, v0, over); err != nil {
			t.Fatal(err)
		}
	}
	// readEvery reads the 4 KiB block at sub into every 64 KiB of
	// [from, to) MiB of v0 (not a sequential stream) and returns how many
	// of its misses the policy refused. Each read waits for its fill, as
	// a host's next command would come after the fill worker's turn: a
	// read while the worker is behind is neither filled nor refused.
	buf := make([]byte, 4096)
	readEvery := func(from, to, sub int64) uint64 {
		t.Helper()
		before := v0.Stats().AdmissionsRefused
		for off := from<<20 + sub; off < to<<20; off += 64 << 10 {
			onTime()
			if err := v0.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
			oc.cache.WaitFills()
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
	// From here on every read is of a block no pass above read (those
	// read the first 32 KiB of each 64 KiB): 2048 blocks a phase, half the
	// cache. 2q refuses all but what fits in the room a GC step may leave
	// under its threshold: a segment (1 MiB) of 4 KiB blocks.
	const mostUnread = 2048 - 256
	readUnread := func(from, to int64) uint64 {
		var refused uint64
		for sub := int64(32 << 10); sub < 64<<10; sub += 4 << 10 {
			refused += readEvery(from, to, sub)
		}
		return refused
	}
	if got := readUnread(0, 16); got < mostUnread {
		t.Fatalf("2q on a full cache refused %d of 2048 misses of blocks it never saw, want at least %d", got, mostUnread)
	}

	writeFile(t, p, policyConfig(dir, "fifo"))
	plan, err := d.reload(ctx, false)
	if err != nil {
		t.Fatalf("reload to fifo: %v", err)
	}
	if !strings.Contains(plan, "cache_policy modified 2q -> fifo") {
		t.Errorf("plan lacks the policy change:\n%s", plan)
	}
	filled := v0.Stats().FillBytes
	if got := readUnread(16, 32); got != 0 {
		t.Errorf("fifo refused %d misses", got)
	}
	if got := v0.Stats().FillBytes - filled; got != 2048*4096 {
		t.Errorf("fifo filled %d bytes of 2048 misses of 4 KiB", got)
	}

	writeFile(t, p, policyConfig(dir, "2q"))
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("reload to 2q: %v", err)
	}
	if got := readUnread(32, 48); got < mostUnread {
		t.Errorf("2q again: refused %d of 2048 misses, want at least %d", got, mostUnread)
	}
}

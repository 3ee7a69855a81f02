package cachecore_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
)

// TestBlackboxDetach: Detach refuses, without force, a failed cache whose
// volume holds dirty data (naming it); with force the
// volume serves its backing device (reads and writes, flush), the
// goroutines stop, and the cache file is refused by the next Open.
func TestBlackboxDetach(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 4))
	r := newRig(t, rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback},
		Cfg: cachecore.Config{Writeback: cachecore.WritebackConfig{IdleAfter: time.Hour, TargetDirtyPercent: 90, HighWatermarkPercent: 95, MaxBytesPerSec: 1}}}, nil)
	ref := backend.NewMemory(r.opts.BackingSize)
	next := uint64(1)
	for round := 0; round == 0 || (round < 3 && r.vol.Stats().DirtyBytes == 0); round++ {
		writeSet(t, r.vol, ref, rng, &next, 60)
		mustOK(t, "flush", r.vol.Flush(ctx))
	}
	if r.vol.Stats().DirtyBytes == 0 {
		t.Fatal("no dirty data; the test needs some")
	}
	r.media.FailAfter(0, errInjectedMedia)
	r.vol.WriteAt(ctx, make([]byte, 4096), 0, false) // the media access that fails
	waitFailed(t, r.cache)
	// The fault was transient (the cache stays retired): the detach mark
	// reaches the cache file. On a media that stays broken the mark is
	// best effort and Detach logs that the file must be formatted.
	r.media.FailAfter(-1, nil)
	err := r.cache.Detach(ctx, false)
	if !errors.Is(err, cachecore.ErrDirtyData) || !strings.Contains(err.Error(), "dirty bytes") {
		t.Fatalf("Detach without force over dirty data: %v, want ErrDirtyData naming the volume", err)
	}
	if err := r.vol.WriteAt(ctx, make([]byte, 4096), 0, false); err == nil {
		t.Fatal("the dirty volume served a write before it was detached")
	}
	mustOK(t, "detach with force", r.cache.Detach(ctx, true))

	// The volume now is its backing device.
	ref2 := backend.NewMemory(r.opts.BackingSize)
	got := make([]byte, r.opts.BackingSize)
	mustOK(t, "backing read", r.mem.ReadAt(ctx, got, 0))
	mustOK(t, "reference copy", ref2.WriteAt(ctx, got, 0))
	writeSet(t, r.vol, ref2, rng, &next, 40)
	mustOK(t, "flush after detach", r.vol.Flush(ctx))
	equalVolume(t, r.vol, ref2, "after detach")
	mustOK(t, "backing read", r.mem.ReadAt(ctx, got, 0))
	want := make([]byte, r.opts.BackingSize)
	mustOK(t, "reference read", ref2.ReadAt(ctx, want, 0))
	if string(got) != string(want) {
		t.Fatal("writes after detach did not reach the backing device")
	}
	closeNoLeak(t, r, ignore)

	if _, _, err := openImage(ctx, r.media, r.backing, r.opts); !errors.Is(err, cachecore.ErrDetachedCache) {
		t.Fatalf("Open of a detached cache file: %v, want ErrDetachedCache", err)
	}
}

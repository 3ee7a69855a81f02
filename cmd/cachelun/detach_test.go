package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/persist"
)

// faultyMedia fails every write and persist once armed, as a dying cache
// device does.
type faultyMedia struct {
	persist.Media
	armed atomic.Bool
}

func (m *faultyMedia) WriteAt(p []byte, off int64) error {
	if m.armed.Load() {
		return fmt.Errorf("%w: injected write error", persist.ErrMediaFault)
	}
	return m.Media.WriteAt(p, off)
}

func (m *faultyMedia) Persist(off, n int64) error {
	if m.armed.Load() {
		return fmt.Errorf("%w: injected persist error", persist.ErrMediaFault)
	}
	return m.Media.Persist(off, n)
}

// failingCacheConfig adds cache c1 (writeback held back so written data
// stays dirty) with volume v9 on it.
const failingCacheConfig = `
[[cache]]
name = "c1"
path = "c1.img"
size = "16MiB"
segment_size = "1MiB"

[cache.writeback]
target_dirty_percent = 90
high_watermark_percent = 95
idle_after = "1h"

[[volume]]
name = "v9"
cache = "c1"
backing = "v9.img"
backing_size = "4MiB"
`

// startFailingCache runs the reload test daemon with cache c1 on media
// the test can break, and dirty data on its volume v9.
func startFailingCache(t *testing.T) (*daemon, *faultyMedia, []byte) {
	t.Helper()
	d, p := startReloadDaemon(t)
	var media *faultyMedia
	d.eng.openMedia = func(path string, opts persist.FileOptions) (persist.Media, error) {
		m, err := openFileMedia(path, opts)
		if err != nil || filepath.Base(path) != "c1.img" {
			return m, err
		}
		media = &faultyMedia{Media: m}
		return media, nil
	}
	writeFile(t, p, reloadConfig(filepath.Dir(p), "info", "writeback", false, failingCacheConfig))
	if _, err := d.reload(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if media == nil {
		t.Fatal("cache c1 not opened through the hook")
	}
	v9, _ := d.eng.cacheVolume("v9")
	dirty := bytes.Repeat([]byte{0x5c}, 8192)
	if err := v9.WriteAt(context.Background(), dirty, 0, false); err != nil {
		t.Fatal(err)
	}
	if v9.Stats().DirtyBytes == 0 {
		t.Fatal("v9 has no dirty data")
	}
	media.armed.Store(true)
	// the next write needs the media: the cache fails
	err := v9.WriteAt(context.Background(), dirty, 65536, true)
	if err == nil {
		t.Fatal("write on failed media succeeded")
	}
	return d, media, dirty
}

func adminCache(t *testing.T, d *daemon, name string) admin.CacheAPI {
	t.Helper()
	for _, c := range (&adminBackend{d: d}).Caches() {
		if c.Name() == name {
			return c
		}
	}
	t.Fatalf("admin API does not show cache %s", name)
	return nil
}

// A cache whose media fails is shown failed by the admin API with the
// reason.
func TestCacheFailureShown(t *testing.T) {
	d, _, _ := startFailingCache(t)
	st := adminCache(t, d, "c1").Stats()
	if !st.Failed || !strings.Contains(st.FailureReason, "injected") {
		t.Fatalf("cache stats after the media failed: %+v", st)
	}
	if adminCache(t, d, "c0").Stats().Failed {
		t.Error("the healthy cache c0 shows failed")
	}
}

package coreadapter_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/admin/coreadapter"
	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/mrc"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/iscsi"
)

const segSize = 128 << 10

// TestAdminOverRealEngine serves the admin API over a real cache and
// volume and checks that what the API reports and does matches the engine.
func TestAdminOverRealEngine(t *testing.T) {
	ctx := context.Background()
	media := persist.NewCrashMedia(persist.SegmentsOffset+64*segSize, persist.TearUnit(0))
	store, err := persist.Format(media, persist.FormatOptions{SegmentSize: segSize, BlockSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	// Writeback paused (no idle speed-up, no target) so the written data
	// stays dirty until the API drains it.
	c, err := cachecore.Open(ctx, store, cachecore.Config{Writeback: cachecore.WritebackConfig{
		TargetDirtyPercent: 90, HighWatermarkPercent: 95, IdleAfter: time.Hour, MaxBytesPerSec: 1,
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	mem := backend.NewMemory(8 << 20)
	vc := cachecore.DefaultVolumeConfig()
	vc.BlockSize = 512
	v, err := c.AddVolume(ctx, "db1", mem, vc)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xab}, 4096)
	if err := v.WriteAt(ctx, data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := v.ReadAt(ctx, buf, 1<<20); err != nil {
		t.Fatal(err)
	}

	backendFuncs := admin.BackendFuncs{
		VolumesFunc: func() []admin.VolumeAPI { return []admin.VolumeAPI{coreadapter.Volume(v, "nvme0")} },
		CachesFunc:  func() []admin.CacheAPI { return []admin.CacheAPI{coreadapter.Cache("nvme0", "/x.cache", c, nil)} },
		SessionsFunc: func() []admin.Session {
			return coreadapter.ISCSISessions([]iscsi.SessionInfo{{Initiator: "iqn.x", ISID: "23d000000001", TSIH: 7,
				Target: "iqn.t", Portal: "127.0.0.1:3260", LUNs: []uint64{0}, InFlight: 1}})
		},
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	admintest.StartServer(t, admin.Config{Backend: backendFuncs, SocketPath: sock})
	cl := admin.NewClient(sock)

	vr, err := cl.Volume(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	engine := v.Stats()
	if vr.Volume.Stats.WriteBytes != engine.WriteBytes || vr.Volume.Stats.WriteBytes < 4096 {
		t.Errorf("API write bytes %d, engine %d", vr.Volume.Stats.WriteBytes, engine.WriteBytes)
	}
	if vr.Volume.Stats.ReadHits != engine.ReadHits || vr.Volume.Stats.ReadHits == 0 {
		t.Errorf("API read hits %d, engine %d", vr.Volume.Stats.ReadHits, engine.ReadHits)
	}
	if vr.Volume.Stats.DirtyBytes <= 0 || vr.Volume.Mode != "writeback" || vr.Volume.Cache != "nvme0" {
		t.Errorf("volume %+v", vr.Volume)
	}

	ex, err := cl.Explain(ctx, "db1", (1<<20)/512)
	if err != nil {
		t.Fatal(err)
	}
	want := coreadapter.Explanation(v.Explain(1 << 20))
	if ex.Explanation != want || want.State != "hit" || !want.Dirty {
		t.Errorf("explain %+v, engine %+v (want a dirty hit)", ex.Explanation, want)
	}

	// The CLI over the real engine: explain, then drain with progress.
	var out, errOut bytes.Buffer
	if code := cli.Explain(ctx, []string{"db1", "2048", "--socket", sock}, &out, &errOut); code != cli.ExitOK ||
		!strings.Contains(out.String(), ": hit") || !strings.Contains(out.String(), "dirty:") {
		t.Errorf("cachelun explain: exit %d, %q %q", code, out.String(), errOut.String())
	}
	out.Reset()
	errOut.Reset()
	if code := cli.Volume(ctx, []string{"drain", "db1", "--socket", sock}, &out, &errOut); code != cli.ExitOK ||
		!strings.Contains(out.String(), "drain db1: done") || !strings.Contains(errOut.String(), "written back") {
		t.Fatalf("cachelun volume drain: exit %d, %q %q", code, out.String(), errOut.String())
	}
	t.Logf("cachelun volume drain db1:\n%s%s", errOut.String(), out.String())
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if d := v.Stats().DirtyBytes; d != 0 {
		t.Errorf("dirty bytes after drain %d", d)
	}
	if err := mem.ReadAt(ctx, buf, 1<<20); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("backing device does not hold the drained data (%v)", err)
	}

	j, err := cl.SetMode(ctx, "db1", "writethrough")
	if err != nil {
		t.Fatal(err)
	}
	if j, err = cl.WaitJob(wctx, j.ID, 10*time.Millisecond, nil); err != nil || j.State != admin.JobSucceeded {
		t.Fatalf("mode: %+v %v", j, err)
	}
	if v.Mode() != cachecore.ModeWritethrough {
		t.Errorf("engine mode %q", v.Mode())
	}

	cr, err := cl.Caches(ctx)
	if err != nil || len(cr.Caches) != 1 || cr.Caches[0].Stats.Segments != c.Stats().Segments || cr.Caches[0].Stats.Segments == 0 {
		t.Errorf("caches %+v (%v)", cr.Caches, err)
	}
	// Detach needs a detach function (the daemon's).
	if j, err = cl.Detach(ctx, "nvme0", false); err != nil {
		t.Fatal(err)
	}
	if j, err = cl.WaitJob(wctx, j.ID, 10*time.Millisecond, nil); err != nil || j.State != admin.JobFailed || !strings.Contains(j.Error, "not supported") {
		t.Errorf("detach without a detach function: %+v %v", j, err)
	}
	ss, err := cl.Sessions(ctx)
	if err != nil || len(ss.Sessions) != 1 || ss.Sessions[0].ID != "isid=0x23d000000001,tsih=7" || ss.Sessions[0].Transport != "iscsi" {
		t.Errorf("sessions %+v (%v)", ss.Sessions, err)
	}
	// Reload without a reload function fails as a job, not as a hang.
	j, err = cl.Reload(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if j, _ = cl.WaitJob(wctx, j.ID, 10*time.Millisecond, nil); j.State != admin.JobFailed || !strings.Contains(j.Error, "not supported") {
		t.Errorf("reload without support: %+v", j)
	}
}

// The engine's curve reaches the admin server with the number of distinct
// blocks it was sampled from (what tells a rough estimate).
func TestSizingCarriesSampledBlocks(t *testing.T) {
	est := mrc.New(mrc.Config{Rate: 1, Seed: 1})
	for b := range uint64(50) {
		est.Access(b)
		est.Access(b)
	}
	c := est.Curve()
	sc := coreadapter.Sizing(cachecore.Advice{Curve: c, CapacityBlocks: 100, BlockSize: 4096})
	if c.Tracked != 50 || sc.SampledBlocks != c.Tracked || sc.References != 100 || sc.SampleRate != 1 {
		t.Fatalf("curve of %d tracked blocks: sizing %+v", c.Tracked, sc)
	}
}

package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
)

// fixture is a running server over a fake backend.
type fixture struct {
	backend *admintest.Backend
	db1     *admintest.Volume
	logs    *admintest.Volume
	cache   *admintest.Cache
	srv     *admintest.Server
	client  *admin.Client
	socket  string
}

type fixtureOpt func(*admin.Config)

func newFixture(t *testing.T, opts ...fixtureOpt) *fixture {
	t.Helper()
	f := &fixture{
		db1:   admintest.NewVolume("db1", "nvme0", 1<<30, 512),
		logs:  admintest.NewVolume("logs", "nvme0", 64<<20, 4096),
		cache: admintest.NewCache("nvme0", "/var/lib/cachelun/nvme0.cache"),
	}
	f.db1.SetStats(admin.VolumeStats{
		ReadHits: 90, ReadMisses: 10, ReadHitBytes: 900 << 10, ReadMissBytes: 100 << 10,
		DirtyBytes: 8 << 20, WritebackLag: 3 * time.Second,
		BypassedRequests: map[string]uint64{"sequential": 4},
		BypassedBytes:    map[string]uint64{"sequential": 16 << 20},
	})
	f.cache.SetStats(admin.CacheStats{Segments: 100, SegmentsUsed: 60, SegmentsFree: 40, DirtyBytes: 8 << 20})
	f.backend = admintest.NewBackend([]*admintest.Volume{f.db1, f.logs}, []*admintest.Cache{f.cache})
	f.backend.SetSessions([]admin.Session{{
		Transport: "iscsi", Initiator: "iqn.1993-08.org.debian:01:abc", Target: "iqn.2026-11.io.cachelun:demo",
		Portal: "127.0.0.1:3260", Remote: "127.0.0.1:51000", ID: "isid=0x23d000000001,tsih=1", LUNs: []uint64{0}, InFlight: 3,
	}})
	f.socket = filepath.Join(t.TempDir(), "run", "admin.sock")
	cfg := admin.Config{Backend: f.backend, SocketPath: f.socket, Version: "test"}
	for _, o := range opts {
		o(&cfg)
	}
	f.srv = admintest.StartServer(t, cfg)
	f.client = admin.NewClient(f.socket)
	return f
}

// rawRequest sends a request over the socket and returns status and body.
func (f *fixture) rawRequest(t *testing.T, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", f.socket)
	}}, Timeout: 5 * time.Second}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://cachelun"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, data
}

func waitJob(t *testing.T, c *admin.Client, id string) admin.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	j, err := c.WaitJob(ctx, id, 5*time.Millisecond, nil)
	if err != nil {
		t.Fatalf("waiting for job %s: %v", id, err)
	}
	return j
}

func TestStatusReportsVolumesCachesSessions(t *testing.T) {
	f := newFixture(t)
	st, err := f.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "test" || st.Stale {
		t.Errorf("version %q stale %v", st.Version, st.Stale)
	}
	if len(st.Volumes) != 2 || st.Volumes[0].Name != "db1" || st.Volumes[1].Name != "logs" {
		t.Fatalf("volumes %+v", st.Volumes)
	}
	db1 := st.Volumes[0]
	if db1.Cache != "nvme0" || db1.Mode != "writeback" || db1.Size != 1<<30 || db1.BlockSize != 512 {
		t.Errorf("db1 %+v", db1)
	}
	if db1.ReadHitRatio != 0.9 || db1.ByteHitRatio != 0.9 {
		t.Errorf("hit ratios %v %v, want 0.9 0.9", db1.ReadHitRatio, db1.ByteHitRatio)
	}
	if db1.Stats.DirtyBytes != 8<<20 || db1.Stats.BypassedBytes["sequential"] != 16<<20 {
		t.Errorf("db1 stats %+v", db1.Stats)
	}
	if len(st.Caches) != 1 || st.Caches[0].Stats.SegmentsUsed != 60 || st.Caches[0].Path == "" {
		t.Errorf("caches %+v", st.Caches)
	}
	if st.Sessions != 1 || st.SessionsBy["iscsi"] != 1 {
		t.Errorf("sessions %d %v", st.Sessions, st.SessionsBy)
	}

	// The answer follows the backend.
	f.db1.UpdateStats(func(s *admin.VolumeStats) { s.ReadHits = 190 })
	vr, err := f.client.Volume(context.Background(), "db1")
	if err != nil {
		t.Fatal(err)
	}
	if vr.Volume.Stats.ReadHits != 190 {
		t.Errorf("read hits %d after update, want 190", vr.Volume.Stats.ReadHits)
	}
	ss, err := f.client.Sessions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ss.Sessions) != 1 || ss.Sessions[0].InFlight != 3 || ss.Sessions[0].Portal != "127.0.0.1:3260" {
		t.Errorf("sessions %+v", ss.Sessions)
	}
}

func TestSocketIsPrivate(t *testing.T) {
	f := newFixture(t)
	fi, err := os.Stat(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket with 0600", fi.Mode())
	}
	// No temporary socket is left next to it.
	entries, err := os.ReadDir(filepath.Dir(f.socket))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("socket directory holds %d entries, want 1", len(entries))
	}
}

func TestSocketInUseStaleAndNotSocket(t *testing.T) {
	f := newFixture(t)
	// A second server on a live socket refuses to steal it.
	srv2, err := admin.NewServer(admin.Config{Backend: f.backend, SocketPath: f.socket})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Serve(context.Background()); !errors.Is(err, admin.ErrSocketInUse) {
		t.Fatalf("second Serve: %v, want ErrSocketInUse", err)
	}
	if _, err := f.client.Status(context.Background()); err != nil {
		t.Fatalf("first server no longer answers: %v", err)
	}

	// A regular file in the way is not removed.
	file := filepath.Join(t.TempDir(), "admin.sock")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv3, _ := admin.NewServer(admin.Config{Backend: f.backend, SocketPath: file})
	if err := srv3.Serve(context.Background()); !errors.Is(err, admin.ErrNotSocket) {
		t.Fatalf("Serve over a file: %v, want ErrNotSocket", err)
	}

	// A stale socket (nobody listening) is replaced.
	stale := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	srv4, _ := admin.NewServer(admin.Config{Backend: f.backend, SocketPath: stale})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv4.Serve(ctx) }()
	select {
	case <-srv4.Ready():
	case err := <-done:
		t.Fatalf("Serve over a stale socket: %v", err)
	}
	if _, err := admin.NewClient(stale).Status(context.Background()); err != nil {
		t.Errorf("server on replaced socket: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
}

func TestTCPListenerRequiresToken(t *testing.T) {
	if _, err := admin.NewServer(admin.Config{Backend: admintest.NewBackend(nil, nil), TCPListen: "127.0.0.1:0"}); !errors.Is(err, admin.ErrNoToken) {
		t.Fatalf("NewServer with TCP and no token: %v, want ErrNoToken", err)
	}
	f := newFixture(t, func(c *admin.Config) { c.TCPListen = "127.0.0.1:0"; c.Token = "s3cret" })
	addr := f.srv.Addr("tcp").String()
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"none", "", http.StatusUnauthorized},
		{"wrong", "Bearer nope", http.StatusUnauthorized},
		{"no scheme", "s3cret", http.StatusUnauthorized},
		{"prefix", "Bearer s3cre", http.StatusUnauthorized},
		{"right", "Bearer s3cret", http.StatusOK},
	} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/status", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		if tc.want == http.StatusUnauthorized {
			var eb admin.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code != "unauthorized" {
				t.Errorf("%s: body %q is not a JSON unauthorized error", tc.name, body)
			}
		}
	}
	// The client with the token works; without it, it gets an API error.
	if _, err := admin.NewTCPClient(addr, "s3cret").Status(context.Background()); err != nil {
		t.Errorf("client with token: %v", err)
	}
	var apiErr *admin.APIError
	if _, err := admin.NewTCPClient(addr, "").Status(context.Background()); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Errorf("client without token: %v, want 401", err)
	}
}

func TestBadRequestsGetJSONErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", "/v2/nothing", "", 404, "not_found"},
		{"GET", "/v1/volumes/nope", "", 404, "not_found"},
		{"POST", "/v1/volumes/nope/drain", "", 404, "not_found"},
		{"GET", "/v1/caches/nope", "", 404, "not_found"},
		{"GET", "/v1/jobs/999", "", 404, "not_found"},
		{"DELETE", "/v1/jobs/999", "", 404, "not_found"},
		{"DELETE", "/v1/status", "", 405, "method_not_allowed"},
		{"GET", "/v1/volumes/db1/drain", "", 405, "method_not_allowed"},
		{"POST", "/v1/volumes/db1/mode", "", 400, "bad_request"},
		{"POST", "/v1/volumes/db1/mode", "{", 400, "bad_request"},
		{"POST", "/v1/volumes/db1/mode", `{"mode":"fast"}`, 400, "bad_request"},
		{"POST", "/v1/volumes/db1/mode", `{"mode":"writethrough","force":true}`, 400, "bad_request"},
		{"POST", "/v1/volumes/db1/mode", `{"mode":"writethrough"} {}`, 400, "bad_request"},
		{"POST", "/v1/volumes/db1/mode", `{"mode":"` + strings.Repeat("x", 70000) + `"}`, 400, "bad_request"},
		{"POST", "/v1/volumes/nope/mode", `{"mode":"writethrough"}`, 404, "not_found"},
		{"GET", "/v1/volumes/db1/explain", "", 400, "bad_request"},
		{"GET", "/v1/volumes/db1/explain?lba=1&offset=512", "", 400, "bad_request"},
		{"GET", "/v1/volumes/db1/explain?lba=x", "", 400, "bad_request"},
		{"GET", "/v1/volumes/db1/explain?lba=-1", "", 400, "bad_request"},
		{"GET", "/v1/volumes/db1/explain?lba=2097152", "", 400, "bad_request"},
		{"GET", "/v1/volumes/db1/explain?offset=1073741824", "", 400, "bad_request"},
		{"POST", "/v1/reload", `{"dry_run":"yes"}`, 400, "bad_request"},
	} {
		status, hdr, body := f.rawRequest(t, tc.method, tc.path, tc.body)
		name := tc.method + " " + tc.path
		if status != tc.status {
			t.Errorf("%s: status %d, want %d (%s)", name, status, tc.status, body)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: content type %q", name, ct)
		}
		var eb admin.ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code != tc.code || eb.Error.Message == "" {
			t.Errorf("%s: body %q, want JSON error %q", name, body, tc.code)
		}
	}
	// Nothing was started by the rejected calls.
	if f.db1.ModeSwitches.Load() != 0 || f.db1.Drains.Load() != 0 || f.db1.Mode() != "writeback" {
		t.Errorf("rejected calls changed the volume")
	}
	if f.cache.Detached.Load() != 0 {
		t.Errorf("healthy cache was detached")
	}
}

// A healthy cache is detached by a job that reports the progress of
// writing back its dirty data.
func TestDetachHealthyCacheJob(t *testing.T) {
	f := newFixture(t)
	j, err := f.client.Detach(context.Background(), "nvme0", false)
	if err != nil {
		t.Fatal(err)
	}
	got := waitJob(t, f.client, j.ID)
	if got.State != admin.JobSucceeded || f.cache.Detached.Load() != 1 || !strings.Contains(got.Result, "detached") {
		t.Fatalf("detach of a healthy cache: %+v, detached %d", got, f.cache.Detached.Load())
	}
	if p := got.Progress; p == nil || !p.Done || p.WrittenBytes != 8<<20 || p.Fraction() != 1 {
		t.Errorf("detach job progress %+v, want 8 MiB written back, done", got.Progress)
	}
}

func TestDrainJobReportsProgressAndConflicts(t *testing.T) {
	f := newFixture(t)
	gate := f.db1.HoldWork()
	ctx := context.Background()
	j, err := f.client.Drain(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != admin.JobDrain || j.Target != "volume/db1" || j.State != admin.JobRunning {
		t.Fatalf("started job %+v", j)
	}
	// The fake reports half the dirty data written back, then holds.
	testkit.WaitFor(t, 5*time.Second, "the drain job's half-way progress", func() bool {
		cur, err := f.client.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Progress == nil || cur.Progress.DirtyBytes != 4<<20 {
			return false
		}
		if cur.Progress.StartDirtyBytes != 8<<20 || cur.Progress.Fraction() != 0.5 {
			t.Errorf("progress %+v", *cur.Progress)
		}
		return true
	})
	// Another drain or a mode switch conflicts; a flush may run.
	var apiErr *admin.APIError
	if _, err := f.client.Drain(ctx, "db1"); !errors.As(err, &apiErr) || apiErr.Status != 409 || apiErr.Job == nil || apiErr.Job.ID != j.ID {
		t.Errorf("second drain: %v, want 409 naming job %s", err, j.ID)
	}
	if _, err := f.client.SetMode(ctx, "db1", "writethrough"); !errors.As(err, &apiErr) || apiErr.Status != 409 {
		t.Errorf("mode during drain: %v, want 409", err)
	}
	vr, err := f.client.Volume(ctx, "db1")
	if err != nil || len(vr.Jobs) != 1 || vr.Jobs[0].ID != j.ID {
		t.Errorf("volume shows jobs %+v (%v)", vr.Jobs, err)
	}
	fj, err := f.client.Flush(ctx, "db1")
	if err != nil {
		t.Fatalf("flush during drain: %v", err)
	}
	gate.Open()
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobSucceeded || got.Progress.DirtyBytes != 0 || got.Finished.IsZero() {
		t.Errorf("drain ended %+v", got)
	}
	if got := waitJob(t, f.client, fj.ID); got.State != admin.JobSucceeded {
		t.Errorf("flush ended %+v", got)
	}
	if f.db1.Drains.Load() != 1 || f.db1.Flushes.Load() != 1 {
		t.Errorf("drains %d flushes %d, want 1 1", f.db1.Drains.Load(), f.db1.Flushes.Load())
	}
	jobs, err := f.client.Jobs(ctx)
	if err != nil || len(jobs) != 2 || jobs[0].ID != fj.ID {
		t.Errorf("jobs %+v (%v), want newest first", jobs, err)
	}
}

func TestModeSwitchAndFailure(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	j, err := f.client.SetMode(ctx, "db1", "writethrough")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobSucceeded || got.Args != "writethrough" {
		t.Errorf("mode job %+v", got)
	}
	if f.db1.Mode() != "writethrough" {
		t.Errorf("mode %q", f.db1.Mode())
	}
	vr, _ := f.client.Volume(ctx, "db1")
	if vr.Volume.Mode != "writethrough" {
		t.Errorf("API reports mode %q", vr.Volume.Mode)
	}

	f.logs.FailWith(errors.New("backing device gone"))
	j, err = f.client.Flush(ctx, "logs")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobFailed || !strings.Contains(got.Error, "backing device gone") {
		t.Errorf("failing flush %+v", got)
	}
}

func TestCancelJob(t *testing.T) {
	f := newFixture(t)
	f.db1.HoldWork()
	ctx := context.Background()
	j, err := f.client.Drain(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobCancelled {
		t.Errorf("cancelled job %+v", got)
	}
	// The volume is free for a new job.
	if _, err := f.client.SetMode(ctx, "db1", "writeback"); err != nil {
		t.Errorf("mode after cancel: %v", err)
	}
}

func TestReloadAndDetach(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var sawDryRun []bool
	f.backend.OnReload(func(ctx context.Context, dryRun bool) (string, error) {
		sawDryRun = append(sawDryRun, dryRun)
		if !dryRun {
			return "", errors.New("cache nvme0: path cannot change live")
		}
		return "volume db1: mode writeback -> writethrough", nil
	})
	j, err := f.client.Reload(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobSucceeded || got.Result != "volume db1: mode writeback -> writethrough" {
		t.Errorf("dry run %+v", got)
	}
	j, err = f.client.Reload(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobFailed || !strings.Contains(got.Error, "cannot change live") {
		t.Errorf("reload %+v", got)
	}
	if fmt.Sprint(sawDryRun) != "[true false]" {
		t.Errorf("backend saw dry runs %v", sawDryRun)
	}
	// An empty body is a real reload.
	status, _, body := f.rawRequest(t, "POST", "/v1/reload", "")
	if status != http.StatusAccepted {
		t.Errorf("reload with empty body: %d %s", status, body)
	}

	f.cache.SetStats(admin.CacheStats{Failed: true, FailureReason: "EIO reading segment 4"})
	f.cache.DetachErr = errors.New("volume db1 has 8 MiB of dirty data")
	j, err = f.client.Detach(ctx, "nvme0", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobFailed || !strings.Contains(got.Error, "db1 has 8 MiB") ||
		f.cache.Detached.Load() != 0 {
		t.Errorf("detach refused by the engine: %+v, detached %d", got, f.cache.Detached.Load())
	}
	j, err = f.client.Detach(ctx, "nvme0", true)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobSucceeded || got.Args != "force" ||
		f.cache.Forced.Load() != 1 || !strings.Contains(got.Result, "detached") {
		t.Errorf("forced detach %+v, forced %d", got, f.cache.Forced.Load())
	}
	f.cache.DetachErr = nil
	j, err = f.client.Detach(ctx, "nvme0", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := waitJob(t, f.client, j.ID); got.State != admin.JobSucceeded || f.cache.Detached.Load() != 2 {
		t.Errorf("detach %+v, detached %d", got, f.cache.Detached.Load())
	}
}

func TestExplain(t *testing.T) {
	f := newFixture(t)
	want := admin.Explanation{Offset: 2048 * 512, State: "hit", Dirty: true, Segment: 12, SegmentOffset: 65536, Gen: 3}
	f.db1.SetExplanation(2048*512, want)
	r, err := f.client.Explain(context.Background(), "db1", 2048)
	if err != nil {
		t.Fatal(err)
	}
	if r.Explanation != want || r.LBA != 2048 || r.BlockSize != 512 || r.Volume != "db1" {
		t.Errorf("explain %+v", r)
	}
	// By byte offset, rounded down to the block.
	status, _, body := f.rawRequest(t, "GET", "/v1/volumes/logs/explain?offset=8191", "")
	var er admin.ExplainResponse
	if status != 200 || json.Unmarshal(body, &er) != nil || er.LBA != 1 || er.Explanation.Offset != 4096 || er.Explanation.State != "miss" {
		t.Errorf("explain by offset: %d %s", status, body)
	}
}

// TestStalledBackendDoesNotBlockCalls: with a drain held in the engine and
// then the engine's read calls stuck too, every API call still answers
// within the bound (from the last snapshot, marked stale).
func TestStalledBackendDoesNotBlockCalls(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, func(c *admin.Config) { c.Registry = reg; c.MetricsListen = "127.0.0.1:0" })
	ctx := context.Background()
	f.db1.HoldWork()
	j, err := f.client.Drain(ctx, "db1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.Flush(ctx, "db1"); err != nil { // held too
		t.Fatal(err)
	}
	const bound = 2 * time.Second
	timed := func(name string, call func() error) {
		t.Helper()
		start := time.Now()
		err := call()
		took := time.Since(start)
		t.Logf("%s answered in %v", name, took)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if took > bound {
			t.Errorf("%s took %v, bound %v", name, took, bound)
		}
	}
	timed("status during drain", func() error {
		st, err := f.client.Status(ctx)
		if err == nil && (st.Stale || len(st.Jobs) != 2) {
			err = fmt.Errorf("stale %v, %d running jobs (want fresh, 2)", st.Stale, len(st.Jobs))
		}
		return err
	})

	readGate := f.db1.HoldReads()
	defer readGate.Open()
	timed("status with stuck stats", func() error {
		st, err := f.client.Status(ctx)
		if err == nil && !st.Stale {
			err = errors.New("answer not marked stale")
		}
		return err
	})
	timed("job poll", func() error { _, err := f.client.Job(ctx, j.ID); return err })
	timed("volume show", func() error { _, err := f.client.Volume(ctx, "logs"); return err })
	timed("sessions", func() error { _, err := f.client.Sessions(ctx); return err })
	timed("mode switch start", func() error { _, err := f.client.SetMode(ctx, "logs", "writearound"); return err })
	timed("explain", func() error {
		_, err := f.client.Explain(ctx, "db1", 0)
		var apiErr *admin.APIError
		if errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable && apiErr.Code == "backend_busy" {
			return nil
		}
		return fmt.Errorf("explain on a stuck volume: %v, want 503 backend_busy", err)
	})
	timed("metrics scrape", func() error {
		body, err := scrape(f.srv.Addr("metrics").String())
		if err == nil && !strings.Contains(body, "cachelun_admin_snapshot_stale 1") {
			err = errors.New("scrape not marked stale")
		}
		return err
	})
	// Once the engine answers again the snapshots are fresh.
	readGate.Open()
	timed("status after release", func() error {
		st, err := f.client.Status(ctx)
		if err == nil && st.Stale {
			err = errors.New("still stale")
		}
		return err
	})
}

// TestShutdownCancelsJobs: ending Serve's context cancels running jobs,
// waits for them and removes the socket.
func TestShutdownCancelsJobs(t *testing.T) {
	f := newFixture(t)
	f.db1.HoldWork()
	j, err := f.client.Drain(context.Background(), "db1")
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Stop()
	if got, ok := jobStateAfterShutdown(f, j.ID); !ok || got != admin.JobCancelled {
		t.Errorf("drain job ended %q (found %v), want cancelled", got, ok)
	}
	if err := f.srv.Serve(context.Background()); !errors.Is(err, admin.ErrServed) {
		t.Errorf("second Serve: %v, want ErrServed", err)
	}
	if n := f.db1.Running.Load(); n != 0 {
		t.Errorf("%d engine calls still running after Serve returned", n)
	}
	if _, err := os.Stat(f.socket); !os.IsNotExist(err) {
		t.Errorf("socket not removed: %v", err)
	}
	if _, err := f.client.Status(context.Background()); !errors.Is(err, admin.ErrUnreachable) {
		t.Errorf("status after shutdown: %v, want ErrUnreachable", err)
	}
}

func fakeEmptyBackend() admin.Backend { return admintest.NewBackend(nil, nil) }

// TestFirstCallWithStuckBackend: with no snapshot yet and the engine not
// answering, reads fail fast with 503 instead of hanging.
func TestFirstCallWithStuckBackend(t *testing.T) {
	f := newFixture(t)
	gate := f.db1.HoldReads()
	defer gate.Open()
	start := time.Now()
	_, err := f.client.Status(context.Background())
	t.Logf("first status answered in %v", time.Since(start))
	var apiErr *admin.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || apiErr.Code != "backend_busy" {
		t.Fatalf("status with a stuck backend and no snapshot: %v, want 503 backend_busy", err)
	}
	gate.Open()
	testkit.WaitFor(t, 5*time.Second, "a fresh status after the engine recovered", func() bool {
		st, err := f.client.Status(context.Background())
		return err == nil && !st.Stale
	})
}

// TestFirstCallWithSlowBackend: an engine that answers its first read
// after the read budget but within a fraction of a second (a daemon just
// started on a loaded machine) gets the client an answer: the client asks
// again after 503 backend_busy.
func TestFirstCallWithSlowBackend(t *testing.T) {
	f := newFixture(t)
	gate := f.db1.HoldReads()
	go func() {
		time.Sleep(150 * time.Millisecond) // the slow engine
		gate.Open()
	}()
	if _, err := f.client.Status(context.Background()); err != nil {
		t.Fatalf("status with an engine slow to answer its first read: %v", err)
	}
}

func TestNoSocketServesMetricsOnly(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	srv := admintest.StartServer(t, admin.Config{Backend: fakeEmptyBackend(), SocketPath: sock, NoSocket: true, MetricsListen: "127.0.0.1:0"})
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket created although disabled: %v", err)
	}
	body, err := scrape(srv.Addr("metrics").String())
	if err != nil || !strings.Contains(body, "cachelun_admin_snapshot_stale 0") {
		t.Errorf("metrics: %v", err)
	}
	// The metrics listener serves nothing else.
	resp, err := http.Get("http://" + srv.Addr("metrics").String() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/v1/status on the metrics listener: %d", resp.StatusCode)
	}
	srv.Stop()
}

// BenchmarkStatusCall measures a status call over the unix socket, idle
// and with a drain held in the engine.
func BenchmarkStatusCall(b *testing.B) {
	for _, held := range []bool{false, true} {
		name := "idle"
		if held {
			name = "drain-held"
		}
		b.Run(name, func(b *testing.B) {
			v := admintest.NewVolume("db1", "nvme0", 1<<30, 512)
			be := admintest.NewBackend([]*admintest.Volume{v}, []*admintest.Cache{admintest.NewCache("nvme0", "")})
			sock := filepath.Join(b.TempDir(), "admin.sock")
			srv := admintest.StartServer(b, admin.Config{Backend: be, SocketPath: sock})
			ctx := context.Background()
			cl := admin.NewClient(sock)
			if held {
				gate := v.HoldWork()
				defer gate.Open()
				if _, err := cl.Drain(ctx, "db1"); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if _, err := cl.Status(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			srv.Stop()
		})
	}
}

func TestStatusPage(t *testing.T) {
	f := newFixture(t, func(c *admin.Config) { c.MetricsListen = "127.0.0.1:0" })
	f.db1.SetExplanation(512*7, admin.Explanation{Offset: 512 * 7, State: "hit", Dirty: true, Segment: 4})
	f.cache.SetStats(admin.CacheStats{Failed: true, FailureReason: "EIO <segment 4>"})
	base := "http://" + f.srv.Addr("metrics").String()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return string(body)
	}
	page := get("/")
	for _, want := range []string{"<td class=\"l\">db1</td>", "writeback", "90.0%", "8.0 MiB", "FAILED EIO &lt;segment 4&gt;", "iqn.1993-08.org.debian:01:abc"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	page = get("/explain?volume=db1&lba=7")
	if !strings.Contains(page, "LBA 7 (byte offset 3584): <b>hit</b>, dirty") {
		t.Errorf("explain on the page: %s", page)
	}
	page = get("/explain?volume=db1&lba=-3")
	if !strings.Contains(page, "bad LBA") {
		t.Errorf("bad LBA not reported")
	}
}

// jobStateAfterShutdown reads a job's state through the handler, which
// keeps working after Serve has returned.
func jobStateAfterShutdown(f *fixture, id string) (admin.JobState, bool) {
	rec := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/jobs/"+id, nil))
	var jr admin.JobResponse
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &jr) != nil {
		return "", false
	}
	return jr.Job.State, true
}

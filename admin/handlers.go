package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"time"
)

// ValidMode reports whether m names a cache mode the engine knows.
func ValidMode(m Mode) bool {
	switch m {
	case "writeback", "writethrough", "writearound", "writeonly", "passthrough": // cachecore.Modes(), tied by a test in admin/coreadapter
		return true
	}
	return false
}

// ErrorBody is the JSON body of every 4xx/5xx answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail names an error with a stable code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Job is the conflicting job, for code "conflict".
	Job *Job `json:"job,omitempty"`
}

// Snapshot metadata carried by every read answer.
type SnapshotMeta struct {
	Taken time.Time `json:"taken"`
	// Stale is true when the backend did not answer within the read budget
	// and the answer comes from an earlier snapshot.
	Stale bool `json:"stale"`
	// CountersSince is when `cachelun stats reset` last reset the
	// counters this answer shows (absent: they count from the start).
	CountersSince *time.Time `json:"counters_since,omitempty"`
}

// StatusResponse is GET /v1/status.
type StatusResponse struct {
	SnapshotMeta
	Version       string         `json:"version,omitempty"`
	Started       time.Time      `json:"started"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Volumes       []VolumeInfo   `json:"volumes"`
	Caches        []CacheInfo    `json:"caches"`
	Sessions      int            `json:"sessions"`
	SessionsBy    map[string]int `json:"sessions_by_transport"`
	Jobs          []Job          `json:"running_jobs"`
	// Clustered: on a cluster node, the clustered volumes it does not
	// serve (it is standby for them, or lost their lock).
	Clustered []ClusterVolume `json:"clustered,omitempty"`
}

// VolumesResponse is GET /v1/volumes.
type VolumesResponse struct {
	SnapshotMeta
	Volumes []VolumeInfo `json:"volumes"`
	// Clustered: on a cluster node, the clustered volumes it does not
	// serve (it is standby for them, or lost their lock); GET /v1/cluster
	// has the cluster's view of them.
	Clustered []ClusterVolume `json:"clustered,omitempty"`
}

// VolumeResponse is GET /v1/volumes/{name}.
type VolumeResponse struct {
	SnapshotMeta
	Volume VolumeInfo `json:"volume"`
	// Jobs are the jobs running on the volume.
	Jobs []Job `json:"running_jobs"`
}

// CachesResponse is GET /v1/caches.
type CachesResponse struct {
	SnapshotMeta
	Caches []CacheInfo `json:"caches"`
}

// CacheResponse is GET /v1/caches/{name}.
type CacheResponse struct {
	SnapshotMeta
	Cache CacheInfo `json:"cache"`
}

// SessionsResponse is GET /v1/sessions.
type SessionsResponse struct {
	SnapshotMeta
	Sessions []Session `json:"sessions"`
}

// ExplainResponse is GET /v1/volumes/{name}/explain.
type ExplainResponse struct {
	Volume      string      `json:"volume"`
	LBA         int64       `json:"lba"`
	BlockSize   int         `json:"block_size"`
	Explanation Explanation `json:"explanation"`
}

// JobResponse carries one job (202 on start, 200 on poll).
type JobResponse struct {
	Job Job `json:"job"`
}

// JobsResponse is GET /v1/jobs.
type JobsResponse struct {
	Jobs []Job `json:"jobs"`
}

// ModeRequest is the body of POST /v1/volumes/{name}/mode.
type ModeRequest struct {
	Mode Mode `json:"mode"`
}

// DetachRequest is the (optional) body of POST /v1/caches/{name}/detach.
type DetachRequest struct {
	// Force detaches even though volumes still have dirty data that
	// cannot be written back (a failed cache, a failing backing device);
	// that data is abandoned.
	Force bool `json:"force"`
}

// ReloadRequest is the (optional) body of POST /v1/reload.
type ReloadRequest struct {
	DryRun bool `json:"dry_run"`
}

const maxBody = 1 << 16

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("GET /v1/volumes", s.handleVolumes)
	mux.HandleFunc("GET /v1/volumes/{name}", s.handleVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/flush", s.handleFlush)
	mux.HandleFunc("POST /v1/volumes/{name}/drain", s.handleDrain)
	mux.HandleFunc("POST /v1/volumes/{name}/mode", s.handleMode)
	mux.HandleFunc("GET /v1/volumes/{name}/explain", s.handleExplain)
	mux.HandleFunc("GET /v1/volumes/{name}/advice", s.handleVolumeAdvice)
	mux.HandleFunc("GET /v1/advice", s.handleAdvice)
	mux.HandleFunc("GET /v1/caches", s.handleCaches)
	mux.HandleFunc("GET /v1/caches/{name}", s.handleCache)
	mux.HandleFunc("POST /v1/caches/{name}/detach", s.handleDetach)
	mux.HandleFunc("GET /v1/sessions", s.handleSessions)
	mux.HandleFunc("POST /v1/reload", s.handleReload)
	mux.HandleFunc("GET /v1/config", s.handleConfig)
	mux.HandleFunc("GET /v1/cluster", s.handleCluster)
	mux.HandleFunc("POST /v1/volumes/{name}/move", s.handleMove)
	mux.HandleFunc("POST /v1/stats/reset", s.handleStatsReset)
	mux.HandleFunc("GET /v1/jobs", s.handleJobs)
	mux.HandleFunc("GET /v1/jobs/{id}", s.handleJob)
	mux.HandleFunc("DELETE /v1/jobs/{id}", s.handleCancelJob)
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /{$}", s.handlePage)
	mux.HandleFunc("GET /explain", s.handlePage)
	return jsonFallback(mux)
}

// jsonFallback turns the mux's own plain-text 404 and 405 answers into JSON
// errors, so every client sees one error format.
func jsonFallback(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The mux would redirect non-canonical paths ("/v1/./status",
		// "//v1/status", a trailing slash); API clients never send them,
		// so they are refused plainly.
		if p := r.URL.Path; p == "" || path.Clean(p) != p {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("path %q is not canonical", p))
			return
		}
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if allow := rec.Header().Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		switch rec.Code {
		case http.StatusMethodNotAllowed:
			writeError(w, rec.Code, "method_not_allowed", fmt.Sprintf("%s not allowed on %s", r.Method, r.URL.Path))
		case http.StatusNotFound:
			writeError(w, rec.Code, "not_found", "no such endpoint: "+r.URL.Path)
		default:
			writeError(w, rec.Code, "bad_request", http.StatusText(rec.Code))
		}
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		fmt.Fprintf(&buf, `{"error":{"code":"internal","message":%q}}`+"\n", err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

// decodeBody reads a JSON body into v. An empty body leaves v unchanged
// when optional is set. Unknown fields and trailing data are errors.
func decodeBody(r *http.Request, v any, optional bool) error {
	defer closeBody(r.Body)
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("body larger than %d bytes", maxBody)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if optional {
			return nil
		}
		return errors.New("empty body, JSON object expected")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON: %w", err)
	}
	if dec.More() {
		return errors.New("bad JSON: trailing data after the object")
	}
	return nil
}

// snapshot gets a snapshot for a read answer, writing a 503 if there is
// none.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) (*snapshot, SnapshotMeta, bool) {
	snap, stale, err := s.snaps.get(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "backend_busy", err.Error())
		return nil, SnapshotMeta{}, false
	}
	meta := SnapshotMeta{Taken: snap.taken, Stale: stale}
	snap, since := s.base.apply(snap)
	if !since.IsZero() {
		meta.CountersSince = &since
	}
	return snap, meta, true
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	resp := StatusResponse{
		SnapshotMeta:  meta,
		Version:       s.cfg.Version,
		Started:       s.started,
		UptimeSeconds: s.clock.Now().Sub(s.started).Seconds(),
		Volumes:       nonNil(snap.volumes),
		Caches:        nonNil(snap.caches),
		Sessions:      len(snap.sessions),
		SessionsBy:    make(map[string]int),
		Jobs:          []Job{},
		Clustered:     s.servedElsewhere(snap.volumes),
	}
	for _, sess := range snap.sessions {
		resp.SessionsBy[sess.Transport]++
	}
	for _, j := range s.jobs.list() {
		if !j.Done() {
			resp.Jobs = append(resp.Jobs, j)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func nonNil[T any](xs []T) []T {
	if xs == nil {
		return []T{}
	}
	return xs
}

func (s *Server) handleVolumes(w http.ResponseWriter, r *http.Request) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, VolumesResponse{SnapshotMeta: meta, Volumes: nonNil(snap.volumes), Clustered: s.servedElsewhere(snap.volumes)})
}

// servedElsewhere is, on a cluster node, the clustered volumes not among
// served: a standby has no engine volume for them (its peer serves them),
// so without this an operator asking a standby for its volumes would see
// nothing of the volumes it is ready to take over.
func (s *Server) servedElsewhere(served []VolumeInfo) []ClusterVolume {
	src, ok := s.cfg.Backend.(ClusterSource)
	if !ok {
		return nil
	}
	st, err := src.ClusterStatus()
	if err != nil {
		return nil
	}
	var out []ClusterVolume
	for _, cv := range st.Volumes {
		if !slices.ContainsFunc(served, func(v VolumeInfo) bool { return v.Name == cv.Name }) {
			out = append(out, cv)
		}
	}
	return out
}

// findVolume resolves {name}, writing the error answer when it fails.
func (s *Server) findVolume(w http.ResponseWriter, r *http.Request) (*snapshot, SnapshotMeta, VolumeAPI, VolumeInfo, bool) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return nil, meta, nil, VolumeInfo{}, false
	}
	name := r.PathValue("name")
	for _, v := range snap.volumes {
		if v.Name == name {
			return snap, meta, snap.volumeHandles[name], v, true
		}
	}
	for _, cv := range s.servedElsewhere(nil) {
		if cv.Name == name {
			owner := cv.Owner
			if owner == "" {
				owner = "unknown"
			}
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("volume %q is not served by this node (%s; owner %s): see cluster status", name, cv.State, owner))
			return nil, meta, nil, VolumeInfo{}, false
		}
	}
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no volume %q", name))
	return nil, meta, nil, VolumeInfo{}, false
}

func (s *Server) handleVolume(w http.ResponseWriter, r *http.Request) {
	_, meta, _, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	resp := VolumeResponse{SnapshotMeta: meta, Volume: info, Jobs: []Job{}}
	for _, target := range []string{volumeTarget(info.Name), flushTarget(info.Name)} {
		if j, ok := s.jobs.running(target); ok {
			resp.Jobs = append(resp.Jobs, j)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// volumeTarget is the job target of drains and mode switches of a volume;
// they exclude each other. Flushes have their own target: a flush is short
// and may run while a drain does.
func volumeTarget(name string) string { return "volume/" + name }
func flushTarget(name string) string  { return "volume/" + name + "/flush" }

// startJob starts a job and writes 202, or 409 on a conflict.
func (s *Server) startJob(w http.ResponseWriter, kind, target, args string, withProgress bool, work jobFunc) {
	j, err := s.jobs.start(kind, target, args, withProgress, work)
	if errors.Is(err, ErrJobConflict) {
		writeJSON(w, http.StatusConflict, ErrorBody{Error: ErrorDetail{Code: "conflict", Message: err.Error(), Job: &j}})
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Location", "/v1/jobs/"+j.ID)
	writeJSON(w, http.StatusAccepted, JobResponse{Job: j})
}

func (s *Server) handleFlush(w http.ResponseWriter, r *http.Request) {
	closeBody(r.Body)
	_, _, v, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	s.startJob(w, JobFlush, flushTarget(info.Name), "", false, func(ctx context.Context, _ func(Progress)) (string, error) {
		return "", v.Flush(ctx)
	})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	closeBody(r.Body)
	_, _, v, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	s.startJob(w, JobDrain, volumeTarget(info.Name), "", true, func(ctx context.Context, report func(Progress)) (string, error) {
		return "", v.Drain(ctx, report)
	})
}

func (s *Server) handleMode(w http.ResponseWriter, r *http.Request) {
	var req ModeRequest
	if err := decodeBody(r, &req, false); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if !ValidMode(req.Mode) {
		writeError(w, http.StatusBadRequest, "bad_request",
			fmt.Sprintf("unknown mode %q (want writeback, writethrough, writearound, writeonly or passthrough)", req.Mode))
		return
	}
	_, _, v, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	s.startJob(w, JobMode, volumeTarget(info.Name), string(req.Mode), true, func(ctx context.Context, report func(Progress)) (string, error) {
		return "", v.SetMode(ctx, req.Mode, report)
	})
}

func (s *Server) handleExplain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	lbaText, offText := q.Get("lba"), q.Get("offset")
	if (lbaText == "") == (offText == "") {
		writeError(w, http.StatusBadRequest, "bad_request", "give exactly one of the query parameters lba or offset")
		return
	}
	start := time.Now()
	_, _, v, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	bs := int64(info.BlockSize)
	if bs <= 0 {
		writeError(w, http.StatusServiceUnavailable, "backend_busy", "volume reports no block size")
		return
	}
	var lba, off int64
	var err error
	if lbaText != "" {
		lba, err = strconv.ParseInt(lbaText, 0, 64)
		if err == nil && (lba < 0 || lba >= info.Size/bs) {
			err = fmt.Errorf("LBA %d out of range (volume has %d blocks)", lba, info.Size/bs)
		}
		off = lba * bs
	} else {
		off, err = strconv.ParseInt(offText, 0, 64)
		if err == nil && (off < 0 || off >= info.Size) {
			err = fmt.Errorf("offset %d out of range (volume size %d)", off, info.Size)
		}
		off -= off % bs
		lba = off / bs
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	var ex Explanation
	// The call shares the request's budget with the snapshot read, with a
	// small floor so that a stale snapshot does not rule out a fresh answer.
	wait := max(s.cfg.ReadBudget-time.Since(start), s.cfg.ReadBudget/5)
	if err := s.callBounded(r.Context(), wait, func() { ex = v.Explain(off) }); err != nil {
		writeError(w, http.StatusServiceUnavailable, "backend_busy", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ExplainResponse{Volume: info.Name, LBA: lba, BlockSize: int(bs), Explanation: ex})
}

// callBounded runs f on a tracked goroutine and waits at most wait for it. At most cap(explainSlots) such calls may be outstanding;
// beyond that it fails at once rather than pile up goroutines behind a
// stalled backend. f's results may be read only if it returns nil.
func (s *Server) callBounded(ctx context.Context, wait time.Duration, f func()) error {
	select {
	case s.explainSlots <- struct{}{}:
	default:
		return fmt.Errorf("%w: too many calls outstanding", ErrBackendBusy)
	}
	done := make(chan struct{})
	started := s.spawn(func() {
		defer func() { <-s.explainSlots }()
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				s.logger.Error("admin: backend call panicked", "panic", fmt.Sprint(r))
			}
		}()
		f()
	})
	if !started {
		<-s.explainSlots
		return fmt.Errorf("%w: shutting down", ErrBackendBusy)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
		return ErrBackendBusy
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) handleCaches(w http.ResponseWriter, r *http.Request) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, CachesResponse{SnapshotMeta: meta, Caches: nonNil(snap.caches)})
}

func (s *Server) findCache(w http.ResponseWriter, r *http.Request) (SnapshotMeta, CacheAPI, CacheInfo, bool) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return meta, nil, CacheInfo{}, false
	}
	name := r.PathValue("name")
	for _, c := range snap.caches {
		if c.Name == name {
			return meta, snap.cacheHandles[name], c, true
		}
	}
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no cache %q", name))
	return meta, nil, CacheInfo{}, false
}

func (s *Server) handleCache(w http.ResponseWriter, r *http.Request) {
	meta, _, info, ok := s.findCache(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, CacheResponse{SnapshotMeta: meta, Cache: info})
}

func (s *Server) handleDetach(w http.ResponseWriter, r *http.Request) {
	var req DetachRequest
	if err := decodeBody(r, &req, true); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	_, c, info, ok := s.findCache(w, r)
	if !ok {
		return
	}
	args := ""
	if req.Force {
		args = "force"
	}
	// A healthy cache writes back its dirty data first: the job shows
	// that progress.
	s.startJob(w, JobDetach, "cache/"+info.Name, args, !info.Stats.Failed, func(ctx context.Context, report func(Progress)) (string, error) {
		if err := c.Detach(ctx, req.Force, report); err != nil {
			return "", err
		}
		return fmt.Sprintf("cache %s detached; its volumes run in passthrough on their backing devices", info.Name), nil
	})
}

func (s *Server) handleSessions(w http.ResponseWriter, r *http.Request) {
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, SessionsResponse{SnapshotMeta: meta, Sessions: nonNil(snap.sessions)})
}

func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	var req ReloadRequest
	if err := decodeBody(r, &req, true); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	args := ""
	if req.DryRun {
		args = "dry-run"
	}
	s.startJob(w, JobReload, "config", args, false, func(ctx context.Context, _ func(Progress)) (string, error) {
		return s.cfg.Backend.Reload(ctx, req.DryRun)
	})
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, JobsResponse{Jobs: s.jobs.list()})
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	j, ok := s.jobs.get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no job %q", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, JobResponse{Job: j})
}

func (s *Server) handleCancelJob(w http.ResponseWriter, r *http.Request) {
	j, ok := s.jobs.cancel(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no job %q", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusAccepted, JobResponse{Job: j})
}

package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ErrUnreachable means the client could not talk to the daemon at all
// (no socket, connection refused, permission denied, no answer).
var ErrUnreachable = errors.New("admin: daemon unreachable")

// APIError is an error answer from the daemon.
type APIError struct {
	Status  int
	Code    string
	Message string
	Job     *Job // the conflicting job, for Code "conflict"
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// Client talks to the admin API. It is safe for concurrent use.
type Client struct {
	http    *http.Client
	base    string
	token   string
	timeout time.Duration
}

// DefaultClientTimeout bounds each API call: the daemon answers every call
// from snapshots or by starting a job, so a slow answer means trouble.
const DefaultClientTimeout = 10 * time.Second

// NewClient returns a client for the unix socket at path.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}, base: "http://cachelun", timeout: DefaultClientTimeout}
}

// NewTCPClient returns a client for the API on a TCP address, sending the
// bearer token.
func NewTCPClient(addr, token string) *Client {
	return &Client{http: &http.Client{Transport: &http.Transport{MaxIdleConns: 2}},
		base: "http://" + addr, token: token, timeout: DefaultClientTimeout}
}

// WithTimeout returns a copy of the client whose calls each give up after
// d (DefaultClientTimeout by default) with ErrUnreachable.
func (c *Client) WithTimeout(d time.Duration) *Client {
	cp := *c
	cp.timeout = d
	return &cp
}

// do sends a request and decodes a 2xx answer into out.
func (c *Client) do(parent context.Context, method, path string, body, out any) error {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return err
		}
	}
	// 503 backend_busy: the engine did not answer within the server's
	// read budget and there was no earlier snapshot to answer from (the
	// daemon's first seconds on a loaded machine). The server did nothing,
	// so asking again a little later is safe; a stuck engine still gets
	// its answer within about a third of a second.
	for attempt := 0; ; attempt++ {
		err := c.once(parent, method, path, data, body != nil, out)
		var apiErr *APIError
		if attempt < 2 && errors.As(err, &apiErr) && apiErr.Code == "backend_busy" && parent.Err() == nil {
			select {
			case <-time.After(100 * time.Millisecond << attempt):
				continue
			case <-parent.Done():
			}
		}
		return err
	}
}

func (c *Client) once(parent context.Context, method, path string, data []byte, hasBody bool, out any) error {
	ctx, cancel := context.WithTimeout(parent, c.timeout)
	defer cancel()
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if parent.Err() != nil {
			return parent.Err() // the caller gave up, not the daemon
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: no answer within %v", ErrUnreachable, c.timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the method and the socket's dummy URL say nothing
		}
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%w: reading answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(answer, &eb) != nil || eb.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: "http", Message: http.StatusText(resp.StatusCode)}
		}
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, Job: eb.Error.Job}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("admin: decoding answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Status returns the daemon's overview.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	var r StatusResponse
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &r)
	return r, err
}

// Volumes lists the volumes.
func (c *Client) Volumes(ctx context.Context) (VolumesResponse, error) {
	var r VolumesResponse
	err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, &r)
	return r, err
}

// Volume returns one volume.
func (c *Client) Volume(ctx context.Context, name string) (VolumeResponse, error) {
	var r VolumeResponse
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &r)
	return r, err
}

func (c *Client) startJob(ctx context.Context, path string, body any) (Job, error) {
	var r JobResponse
	err := c.do(ctx, http.MethodPost, path, body, &r)
	return r.Job, err
}

// Flush starts a flush of a volume.
func (c *Client) Flush(ctx context.Context, volume string) (Job, error) {
	return c.startJob(ctx, "/v1/volumes/"+url.PathEscape(volume)+"/flush", nil)
}

// Drain starts writing back all dirty data of a volume.
func (c *Client) Drain(ctx context.Context, volume string) (Job, error) {
	return c.startJob(ctx, "/v1/volumes/"+url.PathEscape(volume)+"/drain", nil)
}

// SetMode starts a mode switch of a volume.
func (c *Client) SetMode(ctx context.Context, volume string, m Mode) (Job, error) {
	return c.startJob(ctx, "/v1/volumes/"+url.PathEscape(volume)+"/mode", ModeRequest{Mode: m})
}

// Explain explains one logical block of a volume.
func (c *Client) Explain(ctx context.Context, volume string, lba int64) (ExplainResponse, error) {
	var r ExplainResponse
	path := "/v1/volumes/" + url.PathEscape(volume) + "/explain?lba=" + strconv.FormatInt(lba, 10)
	err := c.do(ctx, http.MethodGet, path, nil, &r)
	return r, err
}

// Advice returns the sizing advisor's answer for one volume, or (volume
// "") for every volume and cache; target is the hit ratio to size for (0:
// the default, 0.9).
func (c *Client) Advice(ctx context.Context, volume string, target float64) (AdviceResponse, error) {
	q := ""
	if target != 0 {
		q = "?target=" + strconv.FormatFloat(target, 'g', -1, 64)
	}
	if volume == "" {
		var r AdviceResponse
		err := c.do(ctx, http.MethodGet, "/v1/advice"+q, nil, &r)
		return r, err
	}
	var r VolumeAdviceResponse
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(volume)+"/advice"+q, nil, &r)
	return AdviceResponse{SnapshotMeta: r.SnapshotMeta, Volumes: []Advice{r.Advice}, Caches: []Advice{}}, err
}

// Caches lists the caches.
func (c *Client) Caches(ctx context.Context) (CachesResponse, error) {
	var r CachesResponse
	err := c.do(ctx, http.MethodGet, "/v1/caches", nil, &r)
	return r, err
}

// Detach starts detaching a cache (a healthy one writes back its dirty
// data first); force abandons the dirty data that cannot be written back.
func (c *Client) Detach(ctx context.Context, cache string, force bool) (Job, error) {
	return c.startJob(ctx, "/v1/caches/"+url.PathEscape(cache)+"/detach", DetachRequest{Force: force})
}

// Sessions lists the initiator sessions.
func (c *Client) Sessions(ctx context.Context) (SessionsResponse, error) {
	var r SessionsResponse
	err := c.do(ctx, http.MethodGet, "/v1/sessions", nil, &r)
	return r, err
}

// Reload starts a configuration reload (or its dry run).
func (c *Client) Reload(ctx context.Context, dryRun bool) (Job, error) {
	return c.startJob(ctx, "/v1/reload", ReloadRequest{DryRun: dryRun})
}

// Jobs lists the running and recent jobs.
func (c *Client) Jobs(ctx context.Context) ([]Job, error) {
	var r JobsResponse
	err := c.do(ctx, http.MethodGet, "/v1/jobs", nil, &r)
	return r.Jobs, err
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (Job, error) {
	var r JobResponse
	err := c.do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, &r)
	return r.Job, err
}

// CancelJob asks a job to stop.
func (c *Client) CancelJob(ctx context.Context, id string) (Job, error) {
	var r JobResponse
	err := c.do(ctx, http.MethodDelete, "/v1/jobs/"+url.PathEscape(id), nil, &r)
	return r.Job, err
}

// WaitJob polls a job every interval until it ends or ctx ends, calling
// update with every state seen.
func (c *Client) WaitJob(ctx context.Context, id string, interval time.Duration, update func(Job)) (Job, error) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		j, err := c.Job(ctx, id)
		if err != nil {
			return j, err
		}
		if update != nil {
			update(j)
		}
		if j.Done() {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-ticker.C:
		}
	}
}

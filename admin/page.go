package admin

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"
)

// The status page: a read-only HTML view of the same snapshot the API
// serves, refreshed by the browser every few seconds. It is served at "/"
// on every listener (the metrics listener included: it shows nothing
// /metrics does not) and never changes engine state.

// newPageTemplate parses the page; the text is constant, so it cannot fail.
func newPageTemplate() *template.Template {
	return template.Must(template.New("page").Funcs(template.FuncMap{
		"bytes":  pageBytes,
		"pct":    func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) },
		"dur":    func(d time.Duration) string { return d.Round(time.Millisecond).String() },
		"bypass": func(m map[string]uint64) uint64 { return sumMap(m) },
		"fraction": func(p *Progress) string {
			if p == nil {
				return "-"
			}
			return fmt.Sprintf("%.1f%%", p.Fraction()*100)
		},
	}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>cachelun</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0} td.l,th.l{text-align:left}
.bad{color:#b00;font-weight:bold} .note{color:#a60}
.plot{display:inline-block;margin:0 1.5em 1em 0;vertical-align:top} .summary{font-size:.85em;max-width:520px}
</style></head><body>
<h1>cachelun {{.Version}}</h1>
<p>up {{.Uptime}}; snapshot taken {{.Taken.Format "15:04:05.000"}}{{if .Stale}} <span class="note">(stale: the engine did not answer in time)</span>{{end}}</p>
<h2>Volumes</h2>
<table><tr><th class="l">volume</th><th class="l">cache</th><th class="l">mode</th><th>size</th><th>read hits</th><th>byte hits</th><th>bypassed</th><th>dirty</th><th>writeback lag</th><th>written back</th></tr>
{{range .Volumes}}<tr><td class="l">{{.Name}}</td><td class="l">{{.Cache}}</td><td class="l">{{.Mode}}</td><td>{{bytes .Size}}</td><td>{{pct .ReadHitRatio}}</td><td>{{pct .ByteHitRatio}}</td><td>{{bytes (bypass .Stats.BypassedBytes)}}</td><td>{{bytes .Stats.DirtyBytes}}</td><td>{{dur .Stats.WritebackLag}}</td><td>{{bytes .Stats.WritebackBytes}}</td></tr>
{{end}}</table>
<h2>Caches</h2>
<table><tr><th class="l">cache</th><th>segments</th><th>used</th><th>free</th><th>quarantined</th><th>dirty</th><th>key head</th><th>dirty tail</th><th>key tail</th><th class="l">state</th></tr>
{{range .Caches}}<tr><td class="l">{{.Name}}</td><td>{{.Stats.Segments}}</td><td>{{.Stats.SegmentsUsed}}</td><td>{{.Stats.SegmentsFree}}</td><td>{{.Stats.SegmentsQuarantined}}</td><td>{{bytes .Stats.DirtyBytes}}</td><td>{{.Stats.KeyHead.LSN}}</td><td>{{.Stats.DirtyTail.LSN}}</td><td>{{.Stats.KeyTail.LSN}}</td><td class="l">{{if .Stats.Detached}}detached{{else if .Stats.Failed}}<span class="bad">FAILED {{.Stats.FailureReason}}</span>{{else}}ok{{end}}</td></tr>
{{end}}</table>
<h2>Sessions</h2>
<table><tr><th class="l">transport</th><th class="l">initiator</th><th class="l">target</th><th class="l">portal</th><th class="l">remote</th><th class="l">LUNs</th><th>in flight</th></tr>
{{range .Sessions}}<tr><td class="l">{{.Transport}}</td><td class="l">{{.Initiator}}</td><td class="l">{{.Target}}</td><td class="l">{{.Portal}}</td><td class="l">{{.Remote}}</td><td class="l">{{.LUNs}}</td><td>{{.InFlight}}</td></tr>
{{end}}</table>
{{if .Advice}}<h2>Cache size advisor</h2>
<p>Estimated read hit ratio if the cache were smaller or larger (today's size marked; <a href="/metrics">cachelun_advisor_hit_ratio</a>, <code>cachelun advise</code>).</p>
{{range .Advice}}<div class="plot">{{.Plot}}<p class="summary">{{.Summary}}</p></div>
{{end}}{{end}}
{{if .Jobs}}<h2>Running jobs</h2>
<table><tr><th>job</th><th class="l">kind</th><th class="l">target</th><th>progress</th><th class="l">started</th></tr>
{{range .Jobs}}<tr><td>{{.ID}}</td><td class="l">{{.Kind}} {{.Args}}</td><td class="l">{{.Target}}</td><td>{{fraction .Progress}}</td><td class="l">{{.Started.Format "15:04:05"}}</td></tr>
{{end}}</table>{{end}}
<h2>Explain a block</h2>
<form action="/explain" method="get">volume <select name="volume">{{range .Volumes}}<option>{{.Name}}</option>{{end}}</select>
LBA <input name="lba" size="14"> <input type="submit" value="explain"></form>
{{with .Explain}}<p>volume {{.Volume}}, LBA {{.LBA}} (byte offset {{.Explanation.Offset}}): <b>{{.Explanation.State}}</b>{{if .Explanation.Dirty}}, dirty{{end}};
cache position segment {{.Explanation.Segment}} offset {{.Explanation.SegmentOffset}}, generation {{.Explanation.Gen}}</p>{{end}}
{{with .ExplainError}}<p class="bad">{{.}}</p>{{end}}
<p><a href="/metrics">metrics</a></p>
</body></html>
`))
}

type pageData struct {
	Version      string
	Uptime       string
	Taken        time.Time
	Stale        bool
	Volumes      []VolumeInfo
	Caches       []CacheInfo
	Sessions     []Session
	Jobs         []Job
	Explain      *ExplainResponse
	ExplainError string
	Advice       []pageAdvice
}

func pageBytes(n any) string {
	var v float64
	switch x := n.(type) {
	case int64:
		v = float64(x)
	case uint64:
		v = float64(x)
	case int:
		v = float64(x)
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatFloat(v, 'f', 0, 64) + " B"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i]
}

func sumMap(m map[string]uint64) uint64 {
	var s uint64
	for _, v := range m {
		s += v
	}
	return s
}

// handlePage renders the status page; /explain renders it with an
// explanation of one block.
func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	snap, stale, err := s.snaps.get(r.Context())
	if err != nil {
		http.Error(w, "cachelun: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	snap, _ = s.base.apply(snap) // the page shows what `cachelun status` shows
	data := pageData{
		Version:  s.cfg.Version,
		Uptime:   s.clock.Now().Sub(s.started).Round(time.Second).String(),
		Taken:    snap.taken,
		Stale:    stale,
		Volumes:  snap.volumes,
		Caches:   snap.caches,
		Sessions: snap.sessions,
		Advice:   pageAdvices(snap),
	}
	for _, j := range s.jobs.list() {
		if !j.Done() {
			data.Jobs = append(data.Jobs, j)
		}
	}
	if r.URL.Path == "/explain" {
		data.Explain, data.ExplainError = s.pageExplain(r, snap)
	}
	var buf bytes.Buffer
	if err := s.page.Execute(&buf, data); err != nil {
		http.Error(w, "cachelun: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) pageExplain(r *http.Request, snap *snapshot) (*ExplainResponse, string) {
	name := r.URL.Query().Get("volume")
	v, ok := snap.volumeHandles[name]
	if !ok {
		return nil, fmt.Sprintf("no volume %q", name)
	}
	var info VolumeInfo
	for _, vi := range snap.volumes {
		if vi.Name == name {
			info = vi
		}
	}
	lba, err := strconv.ParseInt(r.URL.Query().Get("lba"), 0, 64)
	bs := int64(info.BlockSize)
	if err != nil || bs <= 0 || lba < 0 || lba >= info.Size/bs {
		return nil, fmt.Sprintf("bad LBA %q (volume has %d blocks)", r.URL.Query().Get("lba"), info.Size/max(bs, 1))
	}
	var ex Explanation
	if err := s.callBounded(r.Context(), s.cfg.ReadBudget, func() { ex = v.Explain(lba * bs) }); err != nil {
		return nil, err.Error()
	}
	return &ExplainResponse{Volume: name, LBA: lba, BlockSize: int(bs), Explanation: ex}, ""
}

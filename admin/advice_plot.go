package admin

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"strconv"
	"strings"
)

// The status page's plot of an Advice: hit ratio against cache size, on a
// log2 size axis from 1/8 to 8 times today's size, today's size marked.
// Inline SVG (no script, no external resource: the page's CSP allows
// none). The points of Advice.Points carry their figures in data-
// attributes, exactly as the API gives them, so a browser test can check
// the plot against the API.

const (
	plotW, plotH           = 520, 250
	plotLeft, plotRight    = 52, 36
	plotTop, plotBottom    = 28, 44
	plotMinLog, plotMaxLog = -3.0, 3.0 // log2 of the size factor
)

func plotX(factor float64) float64 {
	l := math.Log2(max(factor, 1e-9))
	l = min(max(l, plotMinLog), plotMaxLog)
	return plotLeft + (l-plotMinLog)/(plotMaxLog-plotMinLog)*(plotW-plotLeft-plotRight)
}

func plotY(hr float64) float64 {
	hr = min(max(hr, 0), 1)
	return plotTop + (1-hr)*(plotH-plotTop-plotBottom)
}

func fnum(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// advicePlot renders one Advice as an SVG element.
func advicePlot(title string, a Advice) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="advice" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s" data-cache-bytes="%d" data-references="%d">`,
		plotW, plotH, plotW, plotH, html.EscapeString(title), a.CacheBytes, a.References)
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="13" font-weight="bold">%s</text>`, plotLeft, html.EscapeString(title))
	// axes and grid
	x0, x1 := plotX(1.0/8), plotX(8)
	for _, hr := range []float64{0, 0.25, 0.5, 0.75, 1} {
		y := plotY(hr)
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#ddd"/>`, fnum(x0), fnum(y), fnum(x1), fnum(y))
		fmt.Fprintf(&b, `<text x="%d" y="%s" font-size="11" text-anchor="end">%d%%</text>`, plotLeft-6, fnum(y+4), int(hr*100))
	}
	for i := -3; i <= 3; i++ {
		f := math.Exp2(float64(i))
		x := plotX(f)
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#eee"/>`, fnum(x), fnum(plotY(1)), fnum(x), fnum(plotY(0)))
		fmt.Fprintf(&b, `<text x="%s" y="%d" font-size="11" text-anchor="middle">%s</text>`, fnum(x), plotH-plotBottom+15, html.EscapeString(pageBytes(int64(f*float64(a.CacheBytes)))))
	}
	fmt.Fprintf(&b, `<text x="%s" y="%d" font-size="11" text-anchor="middle">cache size (hit ratio of an LRU cache of that size, estimated from %d block reads)</text>`,
		fnum((x0+x1)/2), plotH-6, a.References)
	// today's size
	xt := plotX(1)
	fmt.Fprintf(&b, `<line class="today" x1="%s" y1="%s" x2="%s" y2="%s" stroke="#c60" stroke-dasharray="4 3"/>`, fnum(xt), fnum(plotY(1)-6), fnum(xt), fnum(plotY(0)))
	fmt.Fprintf(&b, `<text x="%s" y="%s" font-size="11" fill="#c60">today %s</text>`, fnum(xt+4), fnum(plotY(1)-8), html.EscapeString(pageBytes(a.CacheBytes)))
	// the curve
	var pts []string
	for _, p := range a.Curve {
		pts = append(pts, fnum(plotX(p.SizeFactor))+","+fnum(plotY(p.HitRatio)))
	}
	fmt.Fprintf(&b, `<polyline class="curve" fill="none" stroke="#1763b8" stroke-width="2" points="%s"/>`, strings.Join(pts, " "))
	for _, p := range a.Points {
		fill := "#1763b8"
		if p.SizeFactor == 1 {
			fill = "#c60"
		}
		fmt.Fprintf(&b, `<circle class="point" cx="%s" cy="%s" r="4" fill="%s" data-size-factor="%s" data-bytes="%d" data-hit-ratio="%s"><title>%s: %.1f%%</title></circle>`,
			fnum(plotX(p.SizeFactor)), fnum(plotY(p.HitRatio)), fill,
			strconv.FormatFloat(p.SizeFactor, 'g', -1, 64), p.Bytes, strconv.FormatFloat(p.HitRatio, 'g', -1, 64),
			html.EscapeString(pageBytes(p.Bytes)), p.HitRatio*100)
		fmt.Fprintf(&b, `<text x="%s" y="%s" font-size="10" text-anchor="middle">%.0f%%</text>`, fnum(plotX(p.SizeFactor)), fnum(plotY(p.HitRatio)-7), p.HitRatio*100)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// adviceSummary is the line under a plot.
func adviceSummary(a Advice) string {
	if a.References == 0 {
		return "no reads yet"
	}
	s := ""
	for _, p := range a.Points {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%g× %s: %.1f%%", p.SizeFactor, pageBytes(p.Bytes), p.HitRatio*100)
	}
	switch {
	case a.Rough():
		s += fmt.Sprintf(" (rough: %s sampled so far)", a.SampledBlocksText())
	case len(a.Points) > 0 && a.Points[0].Bytes < a.ResolvedFromBytes:
		s += fmt.Sprintf(" (below %s: rough, fewer than 100 sampled blocks)", pageBytes(a.ResolvedFromBytes))
	}
	if a.TargetReachable {
		s += fmt.Sprintf("; %.0f%% needs %s", a.Target*100, pageBytes(a.TargetBytes))
	} else {
		s += fmt.Sprintf("; no size reaches %.0f%%", a.Target*100)
	}
	return s
}

// pageAdvice is one plot of the status page.
type pageAdvice struct {
	Title   string
	Plot    template.HTML
	Summary string
}

func pageAdvices(snap *snapshot) []pageAdvice {
	var out []pageAdvice
	for _, v := range snap.volumes {
		a := snap.volumeAdvice(v, DefaultAdviceTarget)
		t := "volume " + v.Name + " (cache " + v.Cache + ")"
		out = append(out, pageAdvice{Title: t, Plot: advicePlot(t, a), Summary: adviceSummary(a)})
	}
	for _, c := range snap.caches {
		a := snap.cacheAdvice(c, DefaultAdviceTarget)
		t := "cache " + c.Name + " (all its volumes)"
		out = append(out, pageAdvice{Title: t, Plot: advicePlot(t, a), Summary: adviceSummary(a)})
	}
	return out
}

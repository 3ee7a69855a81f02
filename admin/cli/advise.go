package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/cachelun/cachelun/admin"
)

// Advise runs `cachelun advise [VOLUME] [--target RATIO]`: the estimated
// read hit ratio at 0.25×, 0.5×, 1×, 2× and 4× the cache's size today, and
// the size a target hit ratio needs; without VOLUME for every volume and
// every cache.
func Advise(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var target float64
	fs := newFlags("advise", "advise [VOLUME] [--target RATIO] [--json]", stdout, stderr)
	c.register(fs)
	fs.Float64Var(&target, "target", admin.DefaultAdviceTarget, "the hit ratio to size the cache for, between 0 and 1")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) > 1 {
		return usageError(fs, stderr, "unexpected argument %q", pos[1])
	}
	if !(target > 0 && target < 1) {
		return usageError(fs, stderr, "bad --target %v: want a hit ratio between 0 and 1 (e.g. 0.9)", target)
	}
	volume := ""
	if len(pos) == 1 {
		volume = pos[0]
	}
	r, err := c.client().Advice(ctx, volume, target)
	if err != nil {
		return failure(stderr, &c, "advise", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	staleNote(stderr, r.SnapshotMeta)
	first := true
	for _, a := range append(r.Volumes, r.Caches...) {
		if !first {
			fmt.Fprintln(stdout)
		}
		first = false
		writeAdvice(stdout, a)
	}
	return ExitOK
}

func writeAdvice(w io.Writer, a admin.Advice) {
	if a.Volume != "" {
		fmt.Fprintf(w, "volume %s (cache %s)", a.Volume, a.Cache)
	} else {
		fmt.Fprintf(w, "cache %s (all its volumes)", a.Cache)
	}
	if a.References == 0 {
		fmt.Fprintf(w, ": no reads yet, nothing to estimate from\n")
		return
	}
	fmt.Fprintf(w, ": %d block reads, %.2g%% of blocks sampled\n", a.References, a.SampleRate*100)
	if a.Rough() {
		fmt.Fprintf(w, "  (%s sampled so far: every figure below is rough until about 100 are)\n", a.SampledBlocksText())
	}
	tw := table(w)
	fmt.Fprintln(tw, "  CACHE SIZE\t\tREAD HIT RATIO (estimated)")
	for _, p := range a.Points {
		note := fmt.Sprintf("%g×", p.SizeFactor)
		if p.SizeFactor == 1 {
			note = "1×, today"
		}
		fmt.Fprintf(tw, "  %s\t(%s)\t%s\n", humanBytes(p.Bytes), note, percent(p.HitRatio))
	}
	tw.Flush()
	if a.Points[0].Bytes < a.ResolvedFromBytes {
		fmt.Fprintf(w, "  (below %s the estimate rests on fewer than 100 sampled blocks: rough)\n", humanBytes(a.ResolvedFromBytes))
	}
	if a.TargetReachable {
		fmt.Fprintf(w, "  %s needs %s (%.2g× today)\n", percent(a.Target), humanBytes(a.TargetBytes), float64(a.TargetBytes)/float64(max(a.CacheBytes, 1)))
	} else {
		fmt.Fprintf(w, "  no cache size reaches %s: too many reads are of blocks never read before\n", percent(a.Target))
	}
}

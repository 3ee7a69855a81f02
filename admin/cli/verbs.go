package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachelun/cachelun/admin"
)

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func staleNote(w io.Writer, meta admin.SnapshotMeta) {
	if meta.Stale {
		fmt.Fprintf(w, "note: the engine did not answer in time; figures are from %s ago\n",
			humanDuration(time.Since(meta.Taken)))
	}
}

// countersNote says since when the counters shown count, after a
// `cachelun stats reset` (staleNote's companion where counters are shown).
func countersNote(w io.Writer, meta admin.SnapshotMeta) {
	staleNote(w, meta)
	if meta.CountersSince != nil {
		fmt.Fprintf(w, "counters since %s (cachelun stats reset)\n", meta.CountersSince.Local().Format(time.DateTime))
	}
}

// Status prints the daemon's overview: `cachelun status [--json]`.
func Status(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	fs := newFlags("status", "status [--socket PATH] [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	st, err := c.client().Status(ctx)
	if err != nil {
		return failure(stderr, &c, "status", err)
	}
	if c.json {
		printJSON(stdout, st)
		return ExitOK
	}
	version := st.Version
	if version == "" {
		version = "(unknown version)"
	}
	fmt.Fprintf(stdout, "cachelun %s, up %s\n", version, humanDuration(time.Duration(st.UptimeSeconds*float64(time.Second))))
	countersNote(stdout, st.SnapshotMeta)
	fmt.Fprintln(stdout)
	writeVolumeTable(stdout, st.Volumes)
	writeServedElsewhere(stdout, st.Clustered)
	fmt.Fprintln(stdout)
	writeCacheTable(stdout, st.Caches)
	fmt.Fprintln(stdout)
	transports := make([]string, 0, len(st.SessionsBy))
	for t, n := range st.SessionsBy {
		transports = append(transports, fmt.Sprintf("%s %d", t, n))
	}
	sort.Strings(transports)
	fmt.Fprintf(stdout, "sessions: %d", st.Sessions)
	if len(transports) > 0 {
		fmt.Fprintf(stdout, " (%s)", strings.Join(transports, ", "))
	}
	fmt.Fprintln(stdout)
	if len(st.Jobs) > 0 {
		fmt.Fprintln(stdout)
		writeJobTable(stdout, st.Jobs)
	}
	return ExitOK
}

func writeVolumeTable(w io.Writer, vols []admin.VolumeInfo) {
	tw := table(w)
	fmt.Fprintln(tw, "VOLUME\tCACHE\tMODE\tSIZE\tREAD HITS\tBYTE HITS\tBYPASSED\tDIRTY\tWB LAG")
	for _, v := range vols {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Cache, v.Mode, humanBytes(v.Size),
			percent(v.ReadHitRatio), percent(v.ByteHitRatio), humanBytes(sumValues(v.Stats.BypassedBytes)),
			humanBytes(v.Stats.DirtyBytes), humanDuration(v.Stats.WritebackLag))
	}
	tw.Flush()
}

// writeServedElsewhere lists, under the volume table of a cluster node,
// the clustered volumes another node serves.
func writeServedElsewhere(w io.Writer, vols []admin.ClusterVolume) {
	if len(vols) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := table(w)
	fmt.Fprintln(tw, "CLUSTERED, NOT SERVED HERE\tTHIS NODE\tOWNER\tALUA")
	for _, v := range vols {
		owner := v.Owner
		if owner == "" {
			owner = "(unknown)" // as cluster status prints it
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, v.State, owner, v.ALUA)
	}
	tw.Flush()
	fmt.Fprintln(w, "details: cachelun cluster status")
}

func cacheState(st admin.CacheStats) string {
	if st.Detached {
		return "detached"
	}
	if st.Failed {
		if st.FailureReason != "" {
			return "FAILED: " + st.FailureReason
		}
		return "FAILED"
	}
	return "ok"
}

func writeCacheTable(w io.Writer, caches []admin.CacheInfo) {
	tw := table(w)
	fmt.Fprintln(tw, "CACHE\tSEGMENTS\tUSED\tFREE\tQUARANTINED\tDIRTY\tGC RUNS\tSTATE")
	for _, c := range caches {
		st := c.Stats
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\n", c.Name, st.Segments, st.SegmentsUsed, st.SegmentsFree,
			st.SegmentsQuarantined, humanBytes(st.DirtyBytes), st.GCRuns, cacheState(st))
	}
	tw.Flush()
}

func writeJobTable(w io.Writer, jobs []admin.Job) {
	tw := table(w)
	fmt.Fprintln(tw, "JOB\tKIND\tTARGET\tSTATE\tPROGRESS\tSTARTED\tERROR")
	for _, j := range jobs {
		prog := "-"
		if j.Progress != nil {
			prog = percent(j.Progress.Fraction())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.Target, j.State, prog,
			j.Started.Local().Format(time.DateTime), j.Error)
	}
	tw.Flush()
}

// Volume runs `cachelun volume list|show|mode|flush|drain|move`.
func Volume(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	switch sub {
	case "list", "ls":
		return volumeList(ctx, rest, stdout, stderr)
	case "show":
		return volumeShow(ctx, rest, stdout, stderr)
	case "mode":
		return volumeMode(ctx, rest, stdout, stderr)
	case "flush", "drain":
		return volumeFlushDrain(ctx, sub, rest, stdout, stderr)
	case "move":
		return volumeMove(ctx, rest, stdout, stderr)
	default:
		return groupUsage(sub, rest, "volume list|show NAME|mode NAME MODE|flush NAME|drain NAME|move NAME NODE [flags]", stdout, stderr)
	}
}

func volumeList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	fs := newFlags("volume list", "volume list [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	r, err := c.client().Volumes(ctx)
	if err != nil {
		return failure(stderr, &c, "volume list", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	countersNote(stdout, r.SnapshotMeta)
	writeVolumeTable(stdout, r.Volumes)
	writeServedElsewhere(stdout, r.Clustered)
	return ExitOK
}

func volumeShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	fs := newFlags("volume show", "volume show NAME [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usageError(fs, stderr, "want exactly one volume name")
	}
	r, err := c.client().Volume(ctx, pos[0])
	if err != nil {
		return failure(stderr, &c, "volume show", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	v, st := r.Volume, r.Volume.Stats
	countersNote(stdout, r.SnapshotMeta)
	tw := table(stdout)
	row := func(k string, format string, a ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, a...)) }
	row("volume", "%s", v.Name)
	row("cache", "%s", v.Cache)
	row("mode", "%s", v.Mode)
	row("size", "%s (%d blocks of %d bytes)", humanBytes(v.Size), v.Size/int64(max(v.BlockSize, 1)), v.BlockSize)
	row("reads", "%d hits, %d partial hits, %d misses (hit ratio %s)", st.ReadHits, st.ReadPartialHits, st.ReadMisses, percent(v.ReadHitRatio))
	row("read bytes", "%s from cache, %s from backing (byte hit ratio %s)", humanBytes(st.ReadHitBytes), humanBytes(st.ReadMissBytes), percent(v.ByteHitRatio))
	row("writes", "%d through the cache, %s written", st.WriteHits, humanBytes(st.WriteBytes))
	row("bypassed", "%s", reasons(st.BypassedRequests, st.BypassedBytes))
	row("bypass races", "%d read misses not cached (bypass write in flight)", st.ReadBypassRaces)
	row("dirty", "%s, writeback lag %s, %s written back", humanBytes(st.DirtyBytes), humanDuration(st.WritebackLag), humanBytes(st.WritebackBytes))
	row("errors", "%s", countsByKind(st.Errors))
	if b := v.Backing; b != nil {
		row("backing", "%s", backingLine(b, v.Size))
	}
	tw.Flush()
	if len(r.Jobs) > 0 {
		fmt.Fprintln(stdout)
		writeJobTable(stdout, r.Jobs)
	}
	return ExitOK
}

// backingLine renders a backing's health: its state first, so a degraded
// or fenced backing is the first thing read.
func backingLine(b *admin.BackingState, volSize int64) string {
	s := fmt.Sprintf("%s %s", b.Device, strings.ToUpper(b.State))
	if b.State != admin.BackingOK {
		s += fmt.Sprintf(" since %s: %s", b.Since.Local().Format(time.DateTime), b.Reason)
	}
	s += fmt.Sprintf("; %d in flight, %d timeouts, %d fenced, %d failures", b.InFlight, b.Timeouts, b.Fenced, b.Failures)
	switch {
	case b.Size < volSize:
		s += fmt.Sprintf("; the device has %s, less than the volume's %s", humanBytes(b.Size), humanBytes(volSize))
	case b.Size > volSize:
		s += fmt.Sprintf("; grown to %s, the volume (%s) follows at the next size check", humanBytes(b.Size), humanBytes(volSize))
	}
	return s
}

func reasons(reqs, bytes map[string]uint64) string {
	keys := map[string]bool{}
	for k, n := range reqs {
		if n != 0 {
			keys[k] = true
		}
	}
	for k, n := range bytes {
		if n != 0 {
			keys[k] = true
		}
	}
	if len(keys) == 0 {
		return "none"
	}
	var parts []string
	for k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d (%s)", k, reqs[k], humanBytes(bytes[k])))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func countsByKind(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func volumeMode(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var noWait bool
	fs := newFlags("volume mode", "volume mode NAME MODE [--no-wait] [--json]", stdout, stderr)
	c.register(fs)
	fs.BoolVar(&noWait, "no-wait", false, "start the switch and return")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return usageError(fs, stderr, "want a volume name and a mode")
	}
	m := admin.Mode(pos[1])
	if !admin.ValidMode(m) {
		return usageError(fs, stderr, "unknown mode %q (want writeback, writethrough, writearound, writeonly or passthrough)", pos[1])
	}
	label := fmt.Sprintf("mode %s -> %s", pos[0], m)
	return runJob(ctx, &c, "volume mode", label, noWait, stdout, stderr,
		func(ctx context.Context, cl *admin.Client) (admin.Job, error) { return cl.SetMode(ctx, pos[0], m) }, nil)
}

func volumeFlushDrain(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) int {
	var c common
	var noWait bool
	fs := newFlags("volume "+sub, "volume "+sub+" NAME [--no-wait] [--json]", stdout, stderr)
	c.register(fs)
	fs.BoolVar(&noWait, "no-wait", false, "start the job and return")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usageError(fs, stderr, "want exactly one volume name")
	}
	name := pos[0]
	return runJob(ctx, &c, "volume "+sub, sub+" "+name, noWait, stdout, stderr,
		func(ctx context.Context, cl *admin.Client) (admin.Job, error) {
			if sub == "flush" {
				return cl.Flush(ctx, name)
			}
			return cl.Drain(ctx, name)
		}, nil)
}

// Cache runs `cachelun cache list|detach NAME`.
func Cache(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	var c common
	switch sub {
	case "list", "ls":
		fs := newFlags("cache list", "cache list [--json]", stdout, stderr)
		c.register(fs)
		pos, code, ok := parseArgs(fs, rest)
		if !ok {
			return code
		}
		if len(pos) != 0 {
			return usageError(fs, stderr, "unexpected argument %q", pos[0])
		}
		r, err := c.client().Caches(ctx)
		if err != nil {
			return failure(stderr, &c, "cache list", err)
		}
		if c.json {
			printJSON(stdout, r)
			return ExitOK
		}
		countersNote(stdout, r.SnapshotMeta)
		writeCacheTable(stdout, r.Caches)
		tw := table(stdout)
		fmt.Fprintln(tw, "\nCACHE\tKEY HEAD\tDIRTY TAIL\tKEY TAIL")
		for _, ci := range r.Caches {
			pos := func(p admin.JournalPos) string { return fmt.Sprintf("%d:%d lsn %d", p.Segment, p.Offset, p.LSN) }
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ci.Name, pos(ci.Stats.KeyHead), pos(ci.Stats.DirtyTail), pos(ci.Stats.KeyTail))
		}
		tw.Flush()
		return ExitOK
	case "detach":
		var noWait, force bool
		fs := newFlags("cache detach", "cache detach NAME [--force] [--no-wait] [--json]", stdout, stderr)
		c.register(fs)
		fs.BoolVar(&noWait, "no-wait", false, "start the job and return")
		fs.BoolVar(&force, "force", false, "detach even though volumes still have dirty data that cannot be written back (that data is lost)")
		pos, code, ok := parseArgs(fs, rest)
		if !ok {
			return code
		}
		if len(pos) != 1 {
			return usageError(fs, stderr, "want exactly one cache name")
		}
		return runJob(ctx, &c, "cache detach", "detach "+pos[0], noWait, stdout, stderr,
			func(ctx context.Context, cl *admin.Client) (admin.Job, error) { return cl.Detach(ctx, pos[0], force) }, nil)
	default:
		return groupUsage(sub, rest, "cache list|detach NAME [flags]", stdout, stderr)
	}
}

// Session runs `cachelun session list`.
func Session(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	if sub != "list" && sub != "ls" {
		return groupUsage(sub, rest, "session list [--json]", stdout, stderr)
	}
	var c common
	fs := newFlags("session list", "session list [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, rest)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	r, err := c.client().Sessions(ctx)
	if err != nil {
		return failure(stderr, &c, "session list", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	staleNote(stdout, r.SnapshotMeta)
	tw := table(stdout)
	fmt.Fprintln(tw, "TRANSPORT\tINITIATOR\tTARGET\tVOLUME\tPORTAL\tREMOTE\tLUNS\tIN FLIGHT\tID")
	for _, s := range r.Sessions {
		luns := make([]string, len(s.LUNs))
		for i, l := range s.LUNs {
			luns[i] = strconv.FormatUint(l, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.Transport, orDash(s.Initiator), s.Target,
			orDash(s.Volume), orDash(s.Portal), orDash(s.Remote), orDash(strings.Join(luns, ",")), s.InFlight, orDash(s.ID))
	}
	tw.Flush()
	return ExitOK
}

// Job runs `cachelun job list|show ID|cancel ID`.
func Job(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	var c common
	fs := newFlags("job "+sub, "job list|show ID|cancel ID [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, rest)
	if !ok {
		return code
	}
	cl := c.client()
	switch sub {
	case "list", "ls":
		if len(pos) != 0 {
			return usageError(fs, stderr, "unexpected argument %q", pos[0])
		}
		jobs, err := cl.Jobs(ctx)
		if err != nil {
			return failure(stderr, &c, "job list", err)
		}
		if c.json {
			printJSON(stdout, admin.JobsResponse{Jobs: jobs})
			return ExitOK
		}
		writeJobTable(stdout, jobs)
		return ExitOK
	case "show", "cancel":
		if len(pos) != 1 {
			return usageError(fs, stderr, "want exactly one job id")
		}
		var (
			j   admin.Job
			err error
		)
		if sub == "show" {
			j, err = cl.Job(ctx, pos[0])
		} else {
			j, err = cl.CancelJob(ctx, pos[0])
		}
		if err != nil {
			return failure(stderr, &c, "job "+sub, err)
		}
		if c.json {
			printJSON(stdout, admin.JobResponse{Job: j})
			return ExitOK
		}
		writeJobTable(stdout, []admin.Job{j})
		if j.Result != "" {
			fmt.Fprintf(stdout, "\n%s\n", strings.TrimRight(j.Result, "\n"))
		}
		return ExitOK
	default:
		fs.Usage()
		return ExitUsage
	}
}

// Reload runs `cachelun reload [--dry-run]`.
func Reload(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var dryRun, noWait bool
	fs := newFlags("reload", "reload [--dry-run] [--no-wait] [--json]", stdout, stderr)
	c.register(fs)
	fs.BoolVar(&dryRun, "dry-run", false, "only print what would change")
	fs.BoolVar(&noWait, "no-wait", false, "start the reload and return")
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	label := "reload"
	if dryRun {
		label = "reload (dry run)"
	}
	return runJob(ctx, &c, "reload", label, noWait, stdout, stderr,
		func(ctx context.Context, cl *admin.Client) (admin.Job, error) { return cl.Reload(ctx, dryRun) },
		func(j admin.Job) {
			plan := strings.TrimRight(j.Result, "\n")
			if plan == "" {
				plan = "no changes"
			}
			fmt.Fprintln(stdout, plan)
		})
}

// Explain runs `cachelun explain VOLUME LBA`.
func Explain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	fs := newFlags("explain", "explain VOLUME LBA [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return usageError(fs, stderr, "want a volume name and a logical block address")
	}
	lba, err := strconv.ParseInt(pos[1], 0, 64)
	if err != nil || lba < 0 {
		return usageError(fs, stderr, "bad LBA %q: want a non-negative block number", pos[1])
	}
	r, err := c.client().Explain(ctx, pos[0], lba)
	if err != nil {
		return failure(stderr, &c, "explain", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	fmt.Fprint(stdout, describe(r))
	return ExitOK
}

// describe turns an explanation into sentences.
func describe(r admin.ExplainResponse) string {
	e := r.Explanation
	var b strings.Builder
	fmt.Fprintf(&b, "volume %s, LBA %d (byte offset %d, %d-byte blocks): %s\n", r.Volume, r.LBA, e.Offset, r.BlockSize, e.State)
	switch e.State {
	case "hit":
		b.WriteString("  a read is served from the cache file\n")
	case "miss":
		b.WriteString("  the block is not cached: a read goes to the backing device and fills the cache,\n" +
			"  unless the volume is in writeonly or passthrough mode or the read is bypassed\n")
	case "placeholder":
		b.WriteString("  a read miss is filling this block right now; a concurrent write or bypass cancels the fill\n")
	case "offline":
		b.WriteString("  the volume is offline (its cache failed or it is being removed): I/O is refused\n")
	case "tombstone":
		b.WriteString("  the cached copy was invalidated (a write went around the cache to the backing device);\n" +
			"  a read goes to the backing device\n")
	}
	if e.State == "hit" || e.Dirty {
		if e.Dirty {
			b.WriteString("  dirty: the cache holds newer data than the backing device; writeback will copy it\n")
		} else {
			b.WriteString("  clean: the backing device holds the same data\n")
		}
		fmt.Fprintf(&b, "  cached at segment %d offset %d (segment generation %d)\n", e.Segment, e.SegmentOffset, e.Gen)
		if e.Checksum != "" {
			fmt.Fprintf(&b, "  data checksum: %s\n", e.Checksum)
		}
	}
	return b.String()
}

// orDash shows an empty table cell as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

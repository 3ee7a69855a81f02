package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// suiteTimeout bounds one iscsi-test-cu suite run; a run that hits it
// counts every test of the suite that did not report as a failure.
const suiteTimeout = 90 * time.Second

// sanitizeSuiteTimeout is SCSI.Sanitize's: its Reset test polls a running
// SANITIZE OVERWRITE once a minute, and each of its overwrites of a
// 128 MiB LUN takes 8 s at the default rate limit.
const sanitizeSuiteTimeout = 240 * time.Second

// conformanceLUNSize is the size of every LUN under test (cachelun and
// tgtd alike).
const conformanceLUNSize = 128 << 20

type testStatus string

const (
	statusPass     testStatus = "PASS"
	statusFail     testStatus = "FAIL"
	statusSkip     testStatus = "SKIP"
	statusNoResult testStatus = "NORESULT" // the run ended (timeout, crash) before the test reported
)

// suiteResult is the outcome of one suite against one LUN.
type suiteResult struct {
	tests    map[string]testStatus // "SCSI.Read10.Simple" -> status
	order    []string
	timedOut bool
	exitCode int
	secs     float64
	log      string // the client's output, each line after the seconds since the suite started
}

// stampedLines keeps what is written to it with every line prefixed by
// the seconds since start, so that a suite's log shows where its time
// went (a suite that hits its timeout says no more than that).
type stampedLines struct {
	start  time.Time
	buf    bytes.Buffer
	inLine bool
}

func (w *stampedLines) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if !w.inLine {
			fmt.Fprintf(&w.buf, "%7.1f  ", time.Since(w.start).Seconds())
			w.inLine = true
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf.Write(p)
			break
		}
		w.buf.Write(p[:i+1])
		w.inLine = false
		p = p[i+1:]
	}
	return n, nil
}

// warningLines returns the lines of a daemon log at level WARN or ERROR.
func warningLines(log string) string {
	var b strings.Builder
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// lastLines returns at most n lines from the end of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (r suiteResult) count(s testStatus) int {
	n := 0
	for _, st := range r.tests {
		if st == s {
			n++
		}
	}
	return n
}

var (
	cuSuiteLine = regexp.MustCompile(`(?m)^Suite: (\S+)`)
	cuTestLine  = regexp.MustCompile(`(?m)^  Test: (\S+) \.\.\.`)
	cuResult    = regexp.MustCompile(`(?:^|\n|\.\.\.)\s*(passed|FAILED)`)
)

// parseCU turns verbose or terse iscsi-test-cu output into per-test
// results. A test is SKIP when it "passed" after printing [SKIPPED].
func parseCU(family, out string) map[string]testStatus {
	res := map[string]testStatus{}
	type mark struct {
		pos   int
		suite bool
		name  string
		end   int // end of the marker itself
	}
	var marks []mark
	for _, m := range cuSuiteLine.FindAllStringSubmatchIndex(out, -1) {
		marks = append(marks, mark{pos: m[0], suite: true, name: out[m[2]:m[3]], end: m[1]})
	}
	for _, m := range cuTestLine.FindAllStringSubmatchIndex(out, -1) {
		marks = append(marks, mark{pos: m[0], name: out[m[2]:m[3]], end: m[1]})
	}
	sort.Slice(marks, func(i, j int) bool { return marks[i].pos < marks[j].pos })
	suite := ""
	for i, m := range marks {
		if m.suite {
			suite = m.name
			continue
		}
		stop := len(out)
		if i+1 < len(marks) {
			stop = marks[i+1].pos
		}
		if k := strings.Index(out[m.end:stop], "\nRun Summary"); k >= 0 {
			stop = m.end + k
		}
		body := out[m.end-3 : stop] // keep the "..." so a result right after it matches
		st := statusNoResult
		if r := cuResult.FindStringSubmatchIndex(body); r != nil {
			word := body[r[2]:r[3]]
			switch {
			case word == "FAILED":
				st = statusFail
			case strings.Contains(body[:r[2]], "[SKIPPED]"):
				st = statusSkip
			default:
				st = statusPass
			}
		}
		res[family+"."+suite+"."+m.name] = st
	}
	return res
}

func runSuite(t *testing.T, label, suite, url string) suiteResult {
	t.Helper()
	start := time.Now()
	// --dataloss (-d) and --allow-sanitize: the LUNs are the test's own.
	timeout := suiteTimeout
	if suite == "SCSI.Sanitize" {
		timeout = sanitizeSuiteTimeout
	}
	stamped := &stampedLines{start: start}
	// stdbuf: the client's stdout is a pipe, which libc would buffer in
	// blocks, and the stamps would say when a block came
	r := runToolCopy(t, timeout, stamped, "stdbuf", "-oL", "iscsi-test-cu", "-d", "--allow-sanitize", "-V", "--test="+suite, url)
	// keep the verbose log of every run for diagnosis
	if dir := filepath.Join(outDir, "cu-"+label); os.MkdirAll(dir, 0o755) == nil {
		os.WriteFile(filepath.Join(dir, suite+".log"), stamped.buf.Bytes(), 0o644)
	}
	family := strings.SplitN(suite, ".", 2)[0]
	res := suiteResult{tests: parseCU(family, r.out), timedOut: r.timedOut, exitCode: r.exitCode,
		secs: time.Since(start).Seconds(), log: stamped.buf.String()}
	for k := range res.tests {
		res.order = append(res.order, k)
	}
	sort.Strings(res.order)
	if len(res.tests) == 0 {
		// nothing reported at all (login failed, hang before the first
		// test): one synthetic failure so the suite cannot look clean
		res.tests[suite+".(run)"] = statusNoResult
		res.order = []string{suite + ".(run)"}
	}
	return res
}

// listSuites returns every SCSI.* and iSCSI.* suite iscsi-test-cu knows.
func listSuites(t *testing.T) []string {
	t.Helper()
	r := runTool(t, toolTimeout, "iscsi-test-cu", "-l")
	var suites []string
	for _, l := range strings.Split(r.out, "\n") {
		l = strings.TrimSpace(l)
		if regexp.MustCompile(`^(SCSI|iSCSI)\.[A-Za-z0-9]+$`).MatchString(l) {
			suites = append(suites, l)
		}
	}
	if len(suites) < 40 {
		t.Fatalf("iscsi-test-cu -l listed only %d suites:\n%s", len(suites), r.out)
	}
	if only := os.Getenv("CACHELUN_CU_SUITES"); only != "" {
		// Repeat a few suites (a flakiness check) without the minutes
		// of the full run; the full run takes no filter.
		var some []string
		for _, s := range suites {
			if slices.Contains(strings.Split(only, ","), s) {
				some = append(some, s)
			}
		}
		if len(some) == 0 {
			t.Fatalf("CACHELUN_CU_SUITES=%s names no suite iscsi-test-cu knows", only)
		}
		t.Logf("CACHELUN_CU_SUITES: only %v", some)
		suites = some
	}
	return suites
}

// knownExceptions reads the test and suite names that open the list items
// ("- `SCSI.Suite.Test` reason") of README.md's "Known conformance
// exceptions" section. Each entry needs its reason next to it in the
// README; names quoted in its prose (skips worth knowing) are not
// exceptions.
func knownExceptions(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	text := string(b)
	i := strings.Index(text, "## Known conformance exceptions")
	if i < 0 {
		t.Fatalf("README.md has no \"## Known conformance exceptions\" section")
	}
	section := text[i+3:]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	ex := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^- `((?:SCSI|iSCSI)\\.[A-Za-z0-9_.]+)`").FindAllStringSubmatch(section, -1) {
		ex[m[1]] = true
	}
	return ex
}

func excepted(ex map[string]bool, test string) bool {
	// "SCSI.Suite.Test" or the whole "SCSI.Suite"
	parts := strings.SplitN(test, ".", 3)
	return ex[test] || (len(parts) >= 2 && ex[parts[0]+"."+parts[1]])
}

// target under conformance test.
type cuTarget struct {
	label string
	url   string
	alive func() bool
	// restart brings a crashed target back (nil: none).
	restart func()
}

// TestConformance runs every SCSI.* and iSCSI.* suite of iscsi-test-cu
// against a thick and a thin cachelun LUN and, as the reference, a thick
// and a thin tgtd LUN started in the same run; it prints the per-suite
// pass/fail/skip table of all four. It fails when cachelun has a failure
// that README.md does not list as a known exception.
func TestConformance(t *testing.T) {
	if testing.Short() {
		// every suite against four LUNs takes minutes; target/iscsi's
		// TestLibiscsiConformanceISCSI keeps a quick libiscsi check in -short
		t.Skip("-short: the full iscsi-test-cu run against cachelun and tgtd takes minutes; the default run keeps it")
	}
	needTools(t, "iscsi-test-cu", "tgtd", "tgtadm", "stdbuf")
	suites := listSuites(t)
	ex := knownExceptions(t)

	dir := t.TempDir()
	// SCSI.Sanitize.Reset waits for its SANITIZE by sleeping 60 s between
	// TEST UNIT READYs without reading its socket: with the default pings
	// (5 s, then 15 s for the answer) the target drops that silent
	// connection, libiscsi logs in again at the next command, the new
	// nexus' unit attention fails that TEST UNIT READY, and the test
	// sleeps again, forever. The initiators this is for answer pings.
	d := startDaemon(t, dir, writeConfig(t, dir, configOptions{lunSize: "128MiB", thinLUN: true, nopInterval: "75s"}))
	tg := startTgtd(t, t.TempDir(), conformanceLUNSize)

	targets := []cuTarget{
		{"cachelun-thick", d.url(0), d.running, func() { d.restart() }},
		{"cachelun-thin", d.url(1), d.running, func() { d.restart() }},
		{"tgtd-thick", tg.url(1), tg.running, nil},
		{"tgtd-thin", tg.url(2), tg.running, nil},
	}
	results := make([]map[string]suiteResult, len(targets))
	start := time.Now()
	for i := range targets {
		results[i] = map[string]suiteResult{}
		for _, s := range suites {
			tgt := &targets[i]
			if strings.HasPrefix(tgt.label, "cachelun") {
				// the daemon may have been restarted: refresh the URL
				tgt.url = d.url(map[bool]int{true: 1, false: 0}[strings.HasSuffix(tgt.label, "thin")])
			}
			r := runSuite(t, tgt.label, s, tgt.url)
			results[i][s] = r
			if !tgt.alive() {
				t.Errorf("%s died during %s", tgt.label, s)
				if tgt.restart == nil {
					t.Fatalf("%s cannot be restarted", tgt.label)
				}
				tgt.restart()
			}
		}
	}
	t.Logf("conformance: %d suites x %d targets in %.0fs", len(suites), len(targets), time.Since(start).Seconds())

	table := conformanceTable(suites, targets, results)
	t.Log("\n" + table)
	if err := os.MkdirAll(outDir, 0o755); err == nil {
		p := filepath.Join(outDir, "conformance.txt")
		if os.WriteFile(p, []byte(table), 0o644) == nil {
			t.Logf("table written to %s", p)
		}
	}

	failed := false
	for i, tgt := range targets[:2] {
		for _, s := range suites {
			r := results[i][s]
			shown := false
			for _, name := range r.order {
				st := r.tests[name]
				if (st == statusFail || st == statusNoResult) && !excepted(ex, name) {
					t.Errorf("%s: %s %s (not a known exception in README.md)", tgt.label, name, st)
					failed = true
					if !shown {
						// CI keeps the test's output, not the files
						t.Logf("%s: the end of %s's log (seconds since the suite started; %.0f s in all, timed out %v):\n%s",
							tgt.label, s, r.secs, r.timedOut, lastLines(r.log, 60))
						shown = true
					}
				}
			}
		}
	}
	if failed {
		t.Logf("the daemon's warnings and errors:\n%s", lastLines(warningLines(d.log.String()), 60))
	}
	d.stop()
}

func conformanceTable(suites []string, targets []cuTarget, results []map[string]suiteResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-32s", "suite (pass/fail/skip)")
	for _, tg := range targets {
		fmt.Fprintf(&b, " %16s", tg.label)
	}
	b.WriteString("\n")
	totals := make([][4]int, len(targets))
	var failures []string
	for _, s := range suites {
		fmt.Fprintf(&b, "%-32s", s)
		for i := range targets {
			r := results[i][s]
			p, f, k, n := r.count(statusPass), r.count(statusFail), r.count(statusSkip), r.count(statusNoResult)
			cell := fmt.Sprintf("%d/%d/%d", p, f, k)
			if n > 0 || r.timedOut {
				cell += fmt.Sprintf("+%dNR", n)
			}
			if r.timedOut {
				cell += "(T)"
			}
			fmt.Fprintf(&b, " %16s", cell)
			totals[i][0] += p
			totals[i][1] += f
			totals[i][2] += k
			totals[i][3] += n
			for _, name := range r.order {
				if st := r.tests[name]; st == statusFail || st == statusNoResult {
					failures = append(failures, fmt.Sprintf("  %s: %s %s", targets[i].label, name, st))
				}
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "%-32s", "TOTAL")
	for i := range targets {
		cell := fmt.Sprintf("%d/%d/%d", totals[i][0], totals[i][1], totals[i][2])
		if totals[i][3] > 0 {
			cell += fmt.Sprintf("+%dNR", totals[i][3])
		}
		fmt.Fprintf(&b, " %16s", cell)
	}
	b.WriteString("\n(NR = no result: the run timed out or the connection died; (T) = suite hit its timeout)\n")
	if len(failures) > 0 {
		b.WriteString("failures:\n" + strings.Join(failures, "\n") + "\n")
	}
	return b.String()
}

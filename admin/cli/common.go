package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/conf"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1
	ExitUsage       = 2
	ExitUnreachable = 3
)

// Environment variables the verbs read.
const (
	EnvSocket = "CACHELUN_ADMIN_SOCKET"
	EnvToken  = "CACHELUN_ADMIN_TOKEN"
)

// Command is the signature of every verb.
type Command func(ctx context.Context, args []string, stdout, stderr io.Writer) int

// DataDirSocket is the admin socket's name under the data directory, where
// the embedded default configuration (the quick start) puts it.
const DataDirSocket = "admin.sock"

// common holds the flags every verb accepts.
type common struct {
	socket  string
	dataDir string
	addr    string
	json    bool
	timeout time.Duration
	// tried lists the sockets looked at, each with why it did not answer,
	// when no flag or environment variable named one and none answered.
	tried []string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.socket, "socket", "", "admin socket `path` (default: $"+EnvSocket+" if set, else the first that answers of ./"+
		filepath.Join(conf.DefaultDataDir, DataDirSocket)+" and "+admin.DefaultSocketPath+")")
	fs.StringVar(&c.dataDir, "data-dir", "", "talk to the daemon serving data directory `dir` (its socket DIR/"+DataDirSocket+")")
	fs.StringVar(&c.addr, "addr", "", "use the TCP admin listener at `host:port` (token from $"+EnvToken+")")
	fs.BoolVar(&c.json, "json", false, "print JSON")
	fs.DurationVar(&c.timeout, "timeout", admin.DefaultClientTimeout, "give up on a daemon that does not answer a call within `duration` (exit 3)")
}

func (c *common) client() *admin.Client {
	if c.addr != "" {
		return admin.NewTCPClient(c.addr, os.Getenv(EnvToken)).WithTimeout(c.timeout)
	}
	return admin.NewClient(c.resolveSocket()).WithTimeout(c.timeout)
}

// resolveSocket picks the admin socket. A socket the operator named
// (--socket, --data-dir, $CACHELUN_ADMIN_SOCKET, in that order) is the
// only one used: falling back from it could reach another daemon than the
// one meant. Otherwise the verbs look where the daemon puts its socket
// without a configuration: ./cachelun-data/admin.sock (the quick start run
// from the current directory), then /run/cachelun/admin.sock (a packaged
// daemon), and take the first that accepts a connection. When none does,
// c.tried says what each answered, for the error.
func (c *common) resolveSocket() string {
	switch {
	case c.socket != "":
		return c.socket
	case c.dataDir != "":
		c.socket = filepath.Join(c.dataDir, DataDirSocket)
		return c.socket
	case os.Getenv(EnvSocket) != "":
		c.socket = os.Getenv(EnvSocket)
		return c.socket
	}
	candidates := []string{filepath.Join(conf.DefaultDataDir, DataDirSocket), admin.DefaultSocketPath}
	c.tried = c.tried[:0]
	for _, p := range candidates {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		d := net.Dialer{Timeout: min(c.timeout, time.Second)}
		conn, err := d.Dial("unix", p)
		if err == nil {
			conn.Close()
			c.socket, c.tried = p, nil
			return p
		}
		reason := err.Error()
		if se := (*os.SyscallError)(nil); errors.As(err, &se) {
			reason = se.Err.Error()
		}
		c.tried = append(c.tried, p+": "+reason)
		c.socket = p
	}
	return c.socket
}

func (c *common) where() string {
	if c.addr != "" {
		return c.addr
	}
	return c.socket
}

// newFlags returns a flag set that reports errors instead of exiting. A
// usage error prints the usage to stderr; -h/--help prints it to stdout
// (see parseArgs): help asked for is the answer, not an error.
func newFlags(name, usage string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: cachelun %s\n", usage)
		fs.PrintDefaults()
	}
	h := &helpFlag{out: stdout}
	fs.Var(h, "h", "show this help")
	fs.Var(h, "help", "show this help")
	return fs
}

// helpFlag is -h/--help: a flag of its own, so that parseArgs can print
// the usage to stdout (the flag package's built-in help goes where its
// errors go).
type helpFlag struct {
	set bool
	out io.Writer
}

func (h *helpFlag) String() string   { return "false" }
func (h *helpFlag) IsBoolFlag() bool { return true }
func (h *helpFlag) Set(s string) error {
	h.set = s == "true"
	return nil
}

// parseArgs parses flags interleaved with positional arguments and returns
// the positional ones. The boolean result is false when the caller should
// return code at once (help shown or usage error).
func parseArgs(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	pos, code, ok = parseInterleaved(fs, args)
	if f := fs.Lookup("help"); f != nil {
		if h, isHelp := f.Value.(*helpFlag); isHelp && h.set {
			fs.SetOutput(h.out)
			fs.Usage()
			return nil, ExitOK, false
		}
	}
	return pos, code, ok
}

func parseInterleaved(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, ExitOK, false
			}
			return nil, ExitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, 0, true
		}
		// After "--" everything is positional.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError prints msg and the usage and returns ExitUsage.
func usageError(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "cachelun %s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return ExitUsage
}

// failure reports err and maps it to an exit code.
func failure(stderr io.Writer, c *common, verb string, err error) int {
	var apiErr *admin.APIError
	switch {
	case errors.Is(err, admin.ErrUnreachable) && len(c.tried) > 0:
		fmt.Fprintf(stderr, "cachelun %s: cannot reach a daemon; looked at:\n", verb)
		for _, t := range c.tried {
			fmt.Fprintf(stderr, "  %s\n", t)
		}
		fmt.Fprintf(stderr, "cachelun %s: run it in the directory where `cachelun serve` was started, or name the daemon with --socket PATH, --data-dir DIR or $%s\n", verb, EnvSocket)
		return ExitUnreachable
	case errors.Is(err, admin.ErrUnreachable):
		cause := strings.TrimPrefix(err.Error(), admin.ErrUnreachable.Error()+": ")
		fmt.Fprintf(stderr, "cachelun %s: cannot reach the daemon at %s: %s\n", verb, c.where(), cause)
		return ExitUnreachable
	case errors.As(err, &apiErr):
		fmt.Fprintf(stderr, "cachelun %s: %s\n", verb, apiErr.Message)
		if apiErr.Job != nil {
			fmt.Fprintf(stderr, "cachelun %s: job %s (%s on %s) is running\n", verb, apiErr.Job.ID, apiErr.Job.Kind, apiErr.Job.Target)
		}
		return ExitFailed
	default:
		fmt.Fprintf(stderr, "cachelun %s: %v\n", verb, err)
		return ExitFailed
	}
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// humanBytes formats n with binary units.
func humanBytes[T int64 | uint64 | int](n T) string {
	v := float64(n)
	neg := v < 0
	if neg {
		v = -v
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := fmt.Sprintf("%.1f %s", v, units[i])
	if i == 0 {
		s = fmt.Sprintf("%d B", int64(v))
	}
	if neg {
		s = "-" + s
	}
	return s
}

func percent(f float64) string { return fmt.Sprintf("%.1f%%", f*100) }

// humanDuration rounds d for display.
func humanDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

func sumValues(m map[string]uint64) uint64 {
	var s uint64
	for _, v := range m {
		s += v
	}
	return s
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// groupUsage answers a verb group (volume, cache, ...) called without a
// subcommand it knows: help asked for ("help", -h, --help) prints the
// usage to stdout and exits 0; anything else prints it to stderr and is a
// usage error.
func groupUsage(sub string, rest []string, usage string, stdout, stderr io.Writer) int {
	if sub == "help" || (sub == "" && len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help")) {
		fmt.Fprintf(stdout, "usage: cachelun %s\n", usage)
		return ExitOK
	}
	if sub != "" {
		fmt.Fprintf(stderr, "cachelun: unknown subcommand %q\n", sub)
	}
	fmt.Fprintf(stderr, "usage: cachelun %s\n", usage)
	return ExitUsage
}

// subcommand splits "verb sub args..." into sub and its arguments.
func subcommand(args []string) (string, []string) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", args
	}
	return args[0], args[1:]
}

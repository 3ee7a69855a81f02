package cli_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/admin/cli"
)

// FuzzArgs feeds arbitrary argument lists to every verb with no daemon
// running: a verb must never panic and must exit with a documented code.
func FuzzArgs(f *testing.F) {
	for _, seed := range []string{
		"status", "volume show db1 --json", "volume mode db1 writeback --no-wait", "explain db1 0x10",
		"volume drain", "job cancel 1", "reload --dry-run", "session list --", "cache detach a b",
		"volume -- --json", "explain db1 -1", "status --socket",
	} {
		f.Add(seed)
	}
	sock := filepath.Join(f.TempDir(), "none.sock")
	verbs := []cli.Command{cli.Status, cli.Volume, cli.Cache, cli.Session, cli.Job, cli.Reload, cli.Explain}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Fields(line)
		if len(args) > 16 {
			args = args[:16]
		}
		args = append(args, "--socket="+sock) // never reach a real daemon
		for i, verb := range verbs {
			var out, errOut bytes.Buffer
			code := verb(context.Background(), args, &out, &errOut)
			if code < cli.ExitOK || code > cli.ExitUnreachable {
				t.Fatalf("verb %d %q: exit %d", i, args, code)
			}
			if code != cli.ExitOK && errOut.Len() == 0 {
				t.Fatalf("verb %d %q: exit %d without a message", i, args, code)
			}
		}
	})
}

package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// versionLine is what `cachelun version` prints: the module version, the
// VCS commit (with "+modified" when the work tree had changes) and the Go
// toolchain, so a bug report names exactly what ran. A binary built
// without VCS stamping (go test, -buildvcs=false) says "commit unknown".
func versionLine(bi *debug.BuildInfo, ok bool) string {
	version, commit, modified := "unknown", "unknown", false
	if ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		commit += "+modified"
	}
	return fmt.Sprintf("cachelun %s, commit %s, %s %s/%s", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(stdout, "usage: cachelun version")
		return 0
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "cachelun version: unexpected argument %q\nusage: cachelun version\n", args[0])
		return 2
	}
	bi, ok := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, versionLine(bi, ok))
	return 0
}

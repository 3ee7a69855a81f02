package main

import "runtime/debug"

// buildVersion names the running binary for status output: the module
// version it was built as ("(devel)" for a build from a checkout) and, when
// the build recorded it, the VCS revision.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

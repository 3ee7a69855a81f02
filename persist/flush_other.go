//go:build !amd64

package persist

// cacheFlusher: no user-space cache write-back primitive is implemented
// for this architecture (arm64 DC CVAP is not testable on the build
// machines), so OpenFile never selects DAX here and uses the non-DAX path.
func cacheFlusher() (func(p []byte), string) { return nil, "" }

// FlushInstruction is "" here: no DAX persist primitive (see cacheFlusher).
func FlushInstruction() string { return "" }

const daxSupported = false

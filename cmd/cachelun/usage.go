package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// parseCommand parses the flags of an offline command (format, inspect,
// check), interleaved with its arguments. Asked for help (-h, --help) it
// prints the usage line and the flags to stdout and returns ok=false with
// code 0: help is the answer, not an error. A bad flag prints the flag
// package's message and the usage to stderr and returns code 2. The usage
// line is the command's summary in commands(), so it has one owner.
func parseCommand(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (pos []string, code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, to the stream that fits
	pos, err := parseFlags(fs, args)
	if err == nil {
		return pos, 0, true
	}
	w, code := stderr, 2
	if errors.Is(err, flag.ErrHelp) {
		w, code = stdout, 0
	}
	printUsage(fs, w)
	return nil, code, false
}

// printUsage prints the command's usage line and its flags to w.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "usage: cachelun %s\n", commands()[fs.Name()].summary)
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// plural returns "1 problem", "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

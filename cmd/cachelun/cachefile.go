package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/persist"
)

// parseFlags parses fs from args allowing flags after positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// sizeFlag is a --size style flag: conf's size grammar (conf.ParseSize,
// the same as in the configuration file), and positive, since 0 stands for
// "not given" (the existing file's size, the default segment size).
type sizeFlag struct{ v *int64 }

func (f sizeFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return strconv.FormatInt(*f.v, 10)
}
func (f sizeFlag) Set(s string) error {
	n, err := conf.ParseSize(s)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("size %q must be positive", s)
	}
	*f.v = n
	return nil
}

func runFormat(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("format", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var size, segSize int64
	fs.Var(sizeFlag{&size}, "size", "cache file size (e.g. 256MiB, 16GiB); default: the existing file's size")
	fs.Var(sizeFlag{&segSize}, "segment-size", "segment size, a power of two from 128KiB to 1GiB (default 16MiB)")
	blockSize := fs.Uint("block-size", persist.DefaultBlockSize, "cache allocation unit in bytes (512..4096)")
	dataCRC := fs.Bool("data-crc", false, "keys carry a CRC32C of their data")
	force := fs.Bool("force", false, "overwrite a cachelun file even if it holds dirty data")
	zeroFill := fs.Bool("zero-fill", true, "write zeros over the part of the file that is created, so the first pass through the cache does not also write the file system's block map (false: only reserve it)")
	pos, code, ok := parseCommand(fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: cachelun format --size SIZE [--segment-size SIZE] [--block-size N] [--data-crc] [--zero-fill=false] [--force] FILE")
		return 2
	}
	path := pos[0]
	if segSize > 1<<30 || *blockSize > 1<<20 {
		fmt.Fprintf(stderr, "cachelun format: segment size %d or block size %d too large\n", segSize, *blockSize)
		return 2
	}
	res, err := persist.FormatFile(ctx, path, persist.FileFormatOptions{
		Size:     size,
		Format:   persist.FormatOptions{SegmentSize: uint32(segSize), BlockSize: uint32(*blockSize), DataCRC: *dataCRC, Force: *force},
		ZeroFill: *zeroFill,
	})
	var refusal *persist.DirtyRefusal
	switch {
	case errors.Is(err, persist.ErrNoSize):
		fmt.Fprintf(stderr, "cachelun format: %s does not exist and --size is not given\n", path)
		return 2
	case errors.As(err, &refusal):
		fmt.Fprintf(stderr, "cachelun format: %v; use --force\n", err)
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "cachelun format: %v\n", err)
		if errors.Is(err, persist.ErrHoldsDirtyData) {
			return 1
		}
		return 2
	}
	sb := res.Superblock
	fmt.Fprintf(stdout, "formatted %s: %d bytes, %d segments of %d bytes, block size %d, data crc %v, media %s, uuid %s\n",
		path, res.Size, sb.SegmentCount, sb.SegmentSize, sb.BlockSize, res.DataCRC, res.Kind, uuidString(sb.UUID))
	return 0
}

func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// openStore opens path read-only. It returns the exit code to use on error.
func openStore(cmd, path string, stderr io.Writer) (persist.Media, *persist.Store, int) {
	m, err := persist.OpenFile(path, persist.FileOptions{ReadOnly: true})
	if err != nil {
		fmt.Fprintf(stderr, "cachelun %s: %v\n", cmd, err)
		return nil, nil, 2
	}
	s, err := persist.Open(m)
	if err != nil {
		m.Close()
		fmt.Fprintf(stderr, "cachelun %s: %s: %v\n", cmd, path, err)
		if errors.Is(err, persist.ErrMediaFault) {
			return nil, nil, 2
		}
		return nil, nil, 1
	}
	return m, s, 0
}

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, code, ok := parseCommand(fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: cachelun inspect [--json] FILE")
		return 2
	}
	m, s, code := openStore("inspect", pos[0], stderr)
	if code != 0 {
		return code
	}
	defer m.Close()
	rep, err := persist.Inspect(s)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun inspect: %v\n", err)
		return 2
	}
	// A file check rejects must not look fine to a script that only
	// inspects it: the report is printed, the exit status is 1.
	problems, err := persist.Check(s)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun inspect: %v\n", err)
		return 2
	}
	// The file was opened read-only, which always reports the non-DAX
	// kind; say what a read-write open (the daemon) would choose. That
	// open claims the file exclusively, so the shared claim ends first.
	m.Close()
	rep.MediaKind = persist.WritableKind(pos[0], rep.MediaKind)
	if rep.MediaKind == persist.KindDAX {
		rep.MediaFlush = persist.FlushInstruction()
	}
	defer func() {
		if len(problems) > 0 && code == 0 {
			fmt.Fprintf(stderr, "cachelun inspect: %s: %s (cachelun check %s lists them)\n", pos[0], plural(len(problems), "problem"), pos[0])
			code = 1
		}
	}()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "cachelun inspect: %v\n", err)
			return 2
		}
		return 0
	}
	sb := rep.Superblock
	w := stdout
	fmt.Fprintf(w, "file:          %s\n", pos[0])
	if rep.MediaKind == persist.KindDAX {
		// Which instruction persists (CPUID: CLWB, else CLFLUSHOPT, else
		// CLFLUSH), the one that differs between CPU models.
		fmt.Fprintf(w, "media:         %s (MAP_SYNC, persist %s+sfence), %d bytes\n", rep.MediaKind, rep.MediaFlush, rep.MediaSize)
	} else {
		fmt.Fprintf(w, "media:         %s, %d bytes\n", rep.MediaKind, rep.MediaSize)
	}
	fmt.Fprintf(w, "format:        version %d, features 0x%x (data crc %v)\n", sb.Version, sb.Features, sb.DataCRC)
	fmt.Fprintf(w, "uuid:          %s\n", sb.UUID)
	fmt.Fprintf(w, "geometry:      %d segments of %d bytes (%d data bytes each), block size %d\n", sb.SegmentCount, sb.SegmentSize, rep.SegmentDataSz, sb.BlockSize)
	fmt.Fprintf(w, "info:          gc percent %d, flags 0x%x\n", rep.Info.GCPercent, rep.Info.Flags)
	fmt.Fprintf(w, "key tail:      segment %d offset %d LSN %d\n", rep.KeyTail.Pos.Seg, rep.KeyTail.Pos.Off, rep.KeyTail.LSN)
	fmt.Fprintf(w, "dirty tail:    segment %d offset %d LSN %d\n", rep.DirtyTail.Pos.Seg, rep.DirtyTail.Pos.Off, rep.DirtyTail.LSN)
	fmt.Fprintf(w, "volumes:       %d\n", len(rep.Volumes))
	for _, v := range rep.Volumes {
		fmt.Fprintf(w, "  id %d %q size %d flags 0x%x\n", v.ID, v.Name, v.Size, v.Flags)
	}
	su := rep.Segments
	fmt.Fprintf(w, "segments:      %d total, %d journal %v, %d with live data, %d quarantined %v, max generation %d\n",
		su.Total, len(su.Log), su.Log, su.Data, len(su.Quarantined), su.Quarantined, su.MaxGen)
	j := rep.Journal
	fmt.Fprintf(w, "journal:       %d ksets (LSN %d..%d, epochs %d..%d), %d keys: %d dirty, %d clean, %d tombstones, %d stale\n",
		j.KSets, j.FirstLSN, j.LastLSN, j.FirstEpoch, j.LastEpoch, j.Keys, j.Dirty, j.Clean, j.Tombstones, j.Stale)
	fmt.Fprintf(w, "journal head:  segment %d offset %d LSN %d\n", j.Head.Pos.Seg, j.Head.Pos.Off, j.Head.LSN)
	fmt.Fprintf(w, "journal end:   %s\n", j.StopReason)
	for _, s := range rep.SlotWarnings {
		fmt.Fprintf(w, "note:          %s\n", s)
	}
	return 0
}

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	repair := fs.Bool("repair", false, "repair a damaged journal (asks first; see --yes)")
	yes := fs.Bool("yes", false, "with --repair: repair without asking")
	pos, code, ok := parseCommand(fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: cachelun check [--repair [--yes]] FILE")
		return 2
	}
	if *repair {
		return runRepair(pos[0], *yes, os.Stdin, stdout, stderr)
	}
	m, s, code := openStore("check", pos[0], stderr)
	if code != 0 {
		return code
	}
	defer m.Close()
	problems, err := persist.Check(s)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun check: %v\n", err)
		return 2
	}
	if len(problems) > 0 {
		fmt.Fprintf(stdout, "%s: %s\n", pos[0], plural(len(problems), "problem"))
		for _, p := range problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: clean\n", pos[0])
	return 0
}

// runRepair is `cachelun check --repair` (persist.Store.RepairJournal):
// for each damaged record of the journal it prints what its loss means per
// volume and, with the operator's consent (--yes, or "yes" typed at the
// prompt), replaces it. Nothing is changed without consent.
func runRepair(path string, yes bool, stdin io.Reader, stdout, stderr io.Writer) int {
	m, err := persist.OpenFile(path, persist.FileOptions{})
	if err != nil {
		fmt.Fprintf(stderr, "cachelun check --repair: %v\n", err)
		return 2
	}
	defer m.Close()
	s, err := persist.Open(m)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun check --repair: %s: %v\n", path, err)
		return 1
	}
	in := bufio.NewReader(stdin)
	const maxRepairs = 64
	repaired, err := s.RepairJournal(maxRepairs, func(d *persist.DamageError) bool {
		fmt.Fprintf(stdout, "%s: journal damaged\n", path)
		for _, line := range s.DamageReport(d) {
			fmt.Fprintf(stdout, "  %s\n", line)
		}
		if yes {
			return true
		}
		fmt.Fprint(stdout, "repair it? the ranges listed above may then read older data (type yes): ")
		answer, _ := in.ReadString('\n')
		return strings.TrimSpace(answer) == "yes"
	}, func(d *persist.DamageError, truncated bool) {
		if truncated {
			fmt.Fprintf(stdout, "repaired: the log now ends before LSN %d\n", d.Stop.LSN)
		} else {
			fmt.Fprintf(stdout, "repaired: the damaged record at segment %d offset %d was replaced; the log continues at LSN %d\n", d.Stop.Pos.Seg, d.Stop.Pos.Off, d.Resume.LSN)
		}
	})
	switch {
	case errors.Is(err, persist.ErrRepairDeclined):
		fmt.Fprintln(stdout, "not repaired; nothing was changed")
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "cachelun check --repair: %v\n", err)
		return 2
	}
	problems, err := persist.Check(s)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun check --repair: %v\n", err)
		return 2
	}
	if len(problems) > 0 {
		fmt.Fprintf(stdout, "%s: %d problem(s) remain that --repair does not change\n", path, len(problems))
		for _, p := range problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		return 1
	}
	if repaired == 0 {
		fmt.Fprintf(stdout, "%s: clean, nothing to repair\n", path)
	} else {
		fmt.Fprintf(stdout, "%s: clean after %d repair(s)\n", path, repaired)
	}
	return 0
}

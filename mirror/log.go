package mirror

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/cachelun/cachelun/cluster"
)

// Log is the durable copy of one volume's shipped journal on a peer: a
// file of framed records, each a shipment (its LSN and payload) or a trim
// mark (everything shipped before it with an LSN up to its LSN is on the
// backing device). A frame is a big-endian u32 body length, the CRC32C of
// the body, and the body: a kind byte, the LSN and, for a shipment, the
// payload.
type Log struct {
	path string

	mu   sync.Mutex
	f    *os.File
	size int64
	// live counts shipments not yet trimmed, maxLSN is the highest LSN
	// appended: a trim at or past it empties the file.
	live   int
	maxLSN uint64
	// compactAt: a trim that leaves live shipments rewrites the file when
	// it is larger than this and more than half of it is trimmed.
	compactAt int64
	// frames are the live shipments' LSNs and frame sizes, in file
	// order; liveBytes their sum: what a compaction would keep.
	frames    []liveFrame
	liveBytes int64
	// compactions counts the rewrites (tests).
	compactions int
}

type liveFrame struct {
	lsn  uint64
	size int64
}

const (
	kindShipment = 1
	kindTrim     = 2
	frameHeader  = 8
	maxBody      = 64 << 20
	// defaultCompactAt: files beyond this are rewritten at a trim.
	defaultCompactAt = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OpenLog opens (or creates) the log file at path. A torn or corrupt tail,
// from a crash during an append, is cut off: those records were never
// acknowledged.
func OpenLog(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	l := &Log{path: path, f: f, compactAt: defaultCompactAt}
	end, err := l.scan(nil)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(end); err != nil {
		f.Close()
		return nil, err
	}
	l.size = end
	return l, nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// Path is the log's file.
func (l *Log) Path() string { return l.path }

// Append adds shipments (LSN, payload) and returns once they are durable.
func (l *Log) Append(lsns []uint64, payloads [][]byte) error {
	if len(lsns) != len(payloads) {
		return fmt.Errorf("mirror: %d LSNs for %d payloads", len(lsns), len(payloads))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var buf []byte
	for i := range lsns {
		if Epoch(lsns[i]) < Epoch(l.maxLSN) {
			// a deposed owner's shipment after the new owner's
			return fmt.Errorf("%w: LSN %d of owner epoch %d after epoch %d", ErrStaleEpoch, lsns[i], Epoch(lsns[i]), Epoch(l.maxLSN))
		}
		if len(payloads[i])+9 > maxBody {
			return fmt.Errorf("mirror: a shipment of %d bytes is larger than a log record may be", len(payloads[i]))
		}
		buf = appendFrame(buf, kindShipment, lsns[i], payloads[i])
	}
	if err := l.write(buf); err != nil {
		return err
	}
	for i := range lsns {
		f := liveFrame{lsn: lsns[i], size: frameHeader + 9 + int64(len(payloads[i]))}
		l.frames = append(l.frames, f)
		l.liveBytes += f.size
	}
	l.live += len(lsns)
	for _, n := range lsns {
		l.maxLSN = max(l.maxLSN, n)
	}
	return nil
}

// Trim records that the backing device holds everything up to lsn. A
// trim past every shipment empties the file; otherwise a trim mark is
// appended, and a large file of which more than half is trimmed is
// rewritten with its live shipments only. (Rewriting at every trim a file
// whose live part alone is large would copy that part again for every
// trim: a peer that mirrors a cache full of dirty data would spend its
// time there.)
func (l *Log) Trim(lsn uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live == 0 && l.size == 0 {
		return nil
	}
	if lsn >= l.maxLSN {
		if err := l.f.Truncate(0); err != nil {
			return err
		}
		if err := l.f.Sync(); err != nil {
			return err
		}
		l.size, l.live = 0, 0
		l.frames, l.liveBytes = nil, 0
		return nil
	}
	if err := l.write(appendFrame(nil, kindTrim, lsn, nil)); err != nil {
		return err
	}
	l.dropFrames(lsn)
	if l.size > l.compactAt && l.size > 2*l.liveBytes {
		return l.compactLocked()
	}
	return nil
}

// dropFrames forgets the live frames a trim at lsn drops.
func (l *Log) dropFrames(lsn uint64) {
	kept := l.frames[:0]
	l.liveBytes = 0
	for _, f := range l.frames {
		if f.lsn > lsn {
			kept = append(kept, f)
			l.liveBytes += f.size
		}
	}
	clear(l.frames[len(kept):])
	l.frames = kept
}

// EpochShift: a link LSN carries the owner epoch of the node that shipped
// it in its bits from EpochShift up (LinkLSN), so that the shipments of a
// later owner sort after those of every earlier one, and a trim of the
// later owner drops the earlier owners' shipments too.
const EpochShift = 40

// LinkLSN is the link LSN of the kset lsn of an owner in epoch: the kset's
// LSN + 1 (links refuse 0) in the low EpochShift bits, the epoch above.
func LinkLSN(epoch, lsn uint64) uint64 { return epoch<<EpochShift | (lsn + 1) }

// Epoch is the owner epoch a link LSN was shipped in.
func Epoch(linkLSN uint64) uint64 { return linkLSN >> EpochShift }

// ErrStaleEpoch refuses a shipment of an owner epoch older than one the
// Log holds: the shipment comes from an owner another node has deposed
// (it wraps cluster.ErrDeposed, which tells the shipping node so).
var ErrStaleEpoch = fmt.Errorf("mirror: shipment of an older owner epoch: %w", cluster.ErrDeposed)

// Shipment is one record of the log as Replay returns it.
type Shipment struct {
	LSN     uint64
	Payload []byte
}

// Replay returns the shipments not trimmed, in the order they were
// appended.
func (l *Log) Replay() ([]Shipment, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Shipment
	if _, err := l.scan(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// Reset empties the log (after Apply put it into the volume).
func (l *Log) Reset() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.f.Truncate(0); err != nil {
		return err
	}
	l.size, l.live, l.maxLSN = 0, 0, 0
	l.frames, l.liveBytes = nil, 0
	return l.f.Sync()
}

func appendFrame(dst []byte, kind byte, lsn uint64, payload []byte) []byte {
	body := make([]byte, 0, 9+len(payload))
	body = append(body, kind)
	body = binary.BigEndian.AppendUint64(body, lsn)
	body = append(body, payload...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(body, castagnoli))
	return append(dst, body...)
}

func (l *Log) write(buf []byte) error {
	if _, err := l.f.WriteAt(buf, l.size); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		return err
	}
	l.size += int64(len(buf))
	return nil
}

// scan reads the file from the start, applying trims, and returns where
// its valid records end; with out set it collects the live shipments.
// It also recounts live and maxLSN.
func (l *Log) scan(out *[]Shipment) (int64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(l.f, 0, 1<<62), 1<<20)
	var live []Shipment
	var off int64
	l.maxLSN = 0
	for {
		var hdr [frameHeader]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n < 9 || n > maxBody {
			break
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			break
		}
		if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(hdr[4:]) {
			break
		}
		lsn := binary.BigEndian.Uint64(body[1:9])
		switch body[0] {
		case kindShipment:
			live = append(live, Shipment{LSN: lsn, Payload: body[9:]})
			l.maxLSN = max(l.maxLSN, lsn)
		case kindTrim:
			kept := live[:0]
			for _, s := range live {
				if s.LSN > lsn {
					kept = append(kept, s)
				}
			}
			live = kept
		default:
			return 0, fmt.Errorf("%w: %s: record of kind %d at %d", ErrCorrupt, l.path, body[0], off)
		}
		off += frameHeader + int64(n)
	}
	l.live = len(live)
	l.frames, l.liveBytes = l.frames[:0], 0
	for _, s := range live {
		f := liveFrame{lsn: s.LSN, size: frameHeader + 9 + int64(len(s.Payload))}
		l.frames = append(l.frames, f)
		l.liveBytes += f.size
	}
	if out != nil {
		*out = live
	}
	return off, nil
}

// compactLocked rewrites the file with only its live shipments (a new
// file renamed over the old one).
func (l *Log) compactLocked() error {
	var live []Shipment
	if _, err := l.scan(&live); err != nil {
		return err
	}
	var buf []byte
	for _, s := range live {
		buf = appendFrame(buf, kindShipment, s.LSN, s.Payload)
	}
	tmp := l.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return errors.Join(errors.New("mirror: compacting "+l.path), err)
	}
	l.f.Close()
	l.f, l.size = f, int64(len(buf))
	l.compactions++
	return syncDir(l.path)
}

func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

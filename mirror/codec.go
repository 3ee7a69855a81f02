package mirror

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record is one range of a shipped kset: data written at Off, or, with
// Discard, Len bytes that read as zeroes from then on.
type Record struct {
	Off     int64
	Len     int64
	Discard bool
	Data    []byte
}

// ErrCorrupt: a payload or a log record is malformed.
var ErrCorrupt = errors.New("mirror: malformed record")

const (
	recHeader   = 8 + 8 + 1 // offset, length, flags
	flagDiscard = 1
	maxRecords  = 1 << 20
)

// Encode appends the wire form of recs to dst: a record count, then per
// record its offset, length, flags and, unless a discard, its data.
func Encode(dst []byte, recs []Record) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(recs)))
	for _, r := range recs {
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.Off))
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.Len))
		if r.Discard {
			dst = append(dst, flagDiscard)
			continue
		}
		dst = append(dst, 0)
		dst = append(dst, r.Data...)
	}
	return dst
}

// Decode parses a payload made by Encode. Data slices alias p.
func Decode(p []byte) ([]Record, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(p))
	}
	n := binary.BigEndian.Uint32(p)
	p = p[4:]
	// Every record takes at least its header: bound the slice by what
	// arrived, not by the count it claims.
	if n > maxRecords || int(n) > len(p)/recHeader {
		return nil, fmt.Errorf("%w: %d records in %d bytes", ErrCorrupt, n, len(p))
	}
	recs := make([]Record, 0, n)
	for i := range n {
		if len(p) < recHeader {
			return nil, fmt.Errorf("%w: record %d truncated", ErrCorrupt, i)
		}
		r := Record{Off: int64(binary.BigEndian.Uint64(p)), Len: int64(binary.BigEndian.Uint64(p[8:]))}
		flags := p[16]
		p = p[recHeader:]
		if r.Off < 0 || r.Len <= 0 || r.Off+r.Len < r.Off || flags&^flagDiscard != 0 {
			return nil, fmt.Errorf("%w: record %d: offset %d length %d flags %#x", ErrCorrupt, i, r.Off, r.Len, flags)
		}
		if flags&flagDiscard != 0 {
			r.Discard = true
		} else {
			if int64(len(p)) < r.Len {
				return nil, fmt.Errorf("%w: record %d: %d bytes of data, %d left", ErrCorrupt, i, r.Len, len(p))
			}
			r.Data = p[:r.Len:r.Len]
			p = p[r.Len:]
		}
		recs = append(recs, r)
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last record", ErrCorrupt, len(p))
	}
	return recs, nil
}

package iscsi

import (
	"io"
	"net"
)

// vecWriter gathers the PDUs of one batch for a single writev: headers and
// small segments are copied into a slab, large data segments are
// referenced where they lie (the task's Data-In buffer), so a read's data
// is never copied on its way to the socket. Referenced memory must stay
// untouched until Flush returns; the writer releases task buffers only
// after flushing.
type vecWriter struct {
	w        io.Writer
	slab     []byte
	sealed   int // slab[:sealed] is already referenced from bufs
	bufs     net.Buffers
	buffered int
}

// referenceMin is the size from which a segment is referenced, not copied.
const referenceMin = 2048

func newVecWriter(w io.Writer) *vecWriter {
	return &vecWriter{w: w, slab: make([]byte, 0, 64<<10)}
}

func (v *vecWriter) seal() {
	if len(v.slab) > v.sealed {
		v.bufs = append(v.bufs, v.slab[v.sealed:len(v.slab):len(v.slab)])
		v.sealed = len(v.slab)
	}
}

// Write buffers p; it never fails.
func (v *vecWriter) Write(p []byte) (int, error) {
	if len(p) >= referenceMin {
		v.seal()
		v.bufs = append(v.bufs, p)
	} else {
		if len(v.slab)+len(p) > cap(v.slab) {
			// A new slab: earlier sealed pieces keep the old one alive.
			v.seal()
			v.slab = make([]byte, 0, max(cap(v.slab), 2*len(p)))
			v.sealed = 0
		}
		v.slab = append(v.slab, p...)
	}
	v.buffered += len(p)
	return len(p), nil
}

// Buffered reports the bytes waiting for Flush.
func (v *vecWriter) Buffered() int { return v.buffered }

// Flush writes everything buffered, with one writev where the connection
// supports it.
func (v *vecWriter) Flush() error {
	v.seal()
	if len(v.bufs) == 0 {
		return nil
	}
	bufs := v.bufs
	_, err := bufs.WriteTo(v.w)
	clear(v.bufs)
	v.bufs = v.bufs[:0]
	v.slab = v.slab[:0]
	v.sealed = 0
	v.buffered = 0
	return err
}

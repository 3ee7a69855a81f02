package backend

import (
	"context"
	"sync"
	"sync/atomic"
)

// memChunkSize is the allocation unit of Memory. Chunks are allocated on the
// first non-zero write, so a large, mostly empty device costs little.
const memChunkSize = 64 << 10

// Memory is an in-memory Device: zero-filled, sparse (64 KiB chunks allocated
// on first non-zero write), safe for concurrent use. Flush is a no-op: every
// completed write is "durable". Use Faulty around it to model a volatile
// write cache and power cuts.
type Memory struct {
	size atomic.Int64

	mu     sync.RWMutex
	chunks map[int64][]byte // chunk index → memChunkSize bytes
	closed bool
}

var _ Device = (*Memory)(nil)

// NewMemory returns a zero-filled in-memory device of size bytes.
func NewMemory(size int64) *Memory {
	if size < 0 {
		size = 0
	}
	m := &Memory{chunks: make(map[int64][]byte)}
	m.size.Store(size)
	return m
}

// Size returns the device size in bytes.
func (m *Memory) Size() int64 { return m.size.Load() }

// Resize changes the device size, as a resized LUN or image would: growing
// adds zeroes; shrinking drops the contents past the new end.
func (m *Memory) Resize(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < 0 {
		size = 0
	}
	if size < m.size.Load() {
		for idx := range m.chunks {
			if idx*memChunkSize >= size {
				delete(m.chunks, idx)
			} else if end := (idx + 1) * memChunkSize; end > size {
				clear(m.chunks[idx][size-idx*memChunkSize:])
			}
		}
	}
	m.size.Store(size)
}

// ReadAt fills p from off.
func (m *Memory) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkRange("read", off, int64(len(p)), m.size.Load()); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	m.readLocked(p, off)
	return nil
}

func (m *Memory) readLocked(p []byte, off int64) {
	for len(p) > 0 {
		idx, in := off/memChunkSize, off%memChunkSize
		n := min(int64(len(p)), memChunkSize-in)
		if c, ok := m.chunks[idx]; ok {
			copy(p[:n], c[in:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

// WriteAt copies p to off.
func (m *Memory) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkRange("write", off, int64(len(p)), m.size.Load()); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.writeLocked(p, off)
	return nil
}

func (m *Memory) writeLocked(p []byte, off int64) {
	for len(p) > 0 {
		idx, in := off/memChunkSize, off%memChunkSize
		n := min(int64(len(p)), memChunkSize-in)
		c, ok := m.chunks[idx]
		if !ok {
			if isZero(p[:n]) {
				p, off = p[n:], off+n
				continue
			}
			c = make([]byte, memChunkSize)
			m.chunks[idx] = c
		}
		copy(c[in:], p[:n])
		p, off = p[n:], off+n
	}
}

// Flush returns nil: memory has no volatile cache.
func (m *Memory) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return nil
}

// Discard zeroes [off, off+n), releasing whole chunks.
func (m *Memory) Discard(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkRange("discard", off, n, m.size.Load()); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.discardLocked(off, n)
	return nil
}

func (m *Memory) discardLocked(off, n int64) {
	for n > 0 {
		idx, in := off/memChunkSize, off%memChunkSize
		k := min(n, memChunkSize-in)
		if c, ok := m.chunks[idx]; ok {
			if k == memChunkSize {
				delete(m.chunks, idx)
			} else {
				clear(c[in : in+k])
			}
		}
		off, n = off+k, n-k
	}
}

// Close releases the memory; later requests fail with ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.chunks = nil
	return nil
}

// Clone returns an independent copy of the device contents (open, even if m
// is closed and its contents were released).
func (m *Memory) Clone() *Memory {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := &Memory{chunks: make(map[int64][]byte, len(m.chunks))}
	c.size.Store(m.size.Load())
	for idx, b := range m.chunks {
		c.chunks[idx] = append([]byte(nil), b...)
	}
	return c
}

// AllocatedBytes reports how much memory the device contents occupy.
func (m *Memory) AllocatedBytes() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.chunks)) * memChunkSize
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

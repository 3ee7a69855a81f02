package cachecore

import (
	"context"
	"errors"

	"github.com/cachelun/cachelun/backend"
)

// Provisioning implements blk.Provisioner: a range with dirty data in the
// cache is mapped (writeback will write it); elsewhere the backing device
// answers, if it can tell (backend.Provisioner: files), and the range is
// mapped if it cannot. Clean cached data changes nothing: it is a copy of
// what the backing device holds, zeroes of a hole included. A run stays
// within one index stripe (4 MiB), so a caller walks longer ranges.
func (v *Volume) Provisioning(ctx context.Context, off, n int64) (bool, int64, error) {
	if err := v.check(off, n); err != nil {
		return false, 0, err
	}
	if n == 0 {
		return true, 0, nil
	}
	if err := v.enter(); err != nil {
		return false, 0, err
	}
	defer v.exit()
	pc := firstPiece(off, n, 0)
	end := pc.e
	if st := v.st.idx.peek(pc.stripe); st != nil {
		st.mu.Lock()
		i, j := st.list.span(pc.s, pc.e)
		for k := i; k < j; k++ {
			x := &st.list.ext[k]
			if x.kind != extDirty {
				continue
			}
			if x.start <= pc.s {
				run := min(x.end(), pc.e) - pc.s
				st.mu.Unlock()
				return true, int64(run), nil
			}
			end = x.start
			break
		}
		st.mu.Unlock()
	}
	want := int64(end - pc.s)
	p, ok := v.dev.(backend.Provisioner)
	if !ok {
		return true, want, nil
	}
	mapped, run, err := p.Provisioning(ctx, off, want)
	switch {
	case errors.Is(err, backend.ErrNotTracked):
		return true, want, nil
	case err != nil:
		return false, 0, v.backingErr("read", off, err) // an allocation query is a read of the device
	}
	return mapped, run, nil
}

package backend

// SizePoller is a Device whose size can change while it is open: PollSize
// re-reads the size (File: fstat or BLKGETSIZE64; backend/rbd: the image
// header) and makes it the device's Size, reporting whether it changed.
// A caller that serves the device to hosts decides what a change means
// (cachecore.Volume.Grow for a growth; a shrink is never followed there).
type SizePoller interface {
	PollSize() (size int64, changed bool, err error)
}

// PollerOf returns the SizePoller of dev or of the device it wraps (Slow,
// Faulty: Inner), or false when none in the chain can change size.
func PollerOf(dev Device) (SizePoller, bool) {
	for dev != nil {
		if p, ok := dev.(SizePoller); ok {
			return p, true
		}
		w, ok := dev.(interface{ Inner() Device })
		if !ok {
			return nil, false
		}
		dev = w.Inner()
	}
	return nil, false
}

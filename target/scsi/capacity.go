package scsi

// Capacity changes at runtime (a volume that grew, a TCMU device whose
// dev_size changed).
//
// The logical unit reports the capacity it last took from its volume
// (capacity), not the volume's size at each command: READ CAPACITY(10/16),
// the mode parameter block descriptors, the LBA range checks and GET LBA
// STATUS all see a change together with the unit attention that announces
// it, and never before. RefreshCapacity takes the volume's size and, when it
// changed, establishes CAPACITY DATA HAS CHANGED (2Ah/09h) for every I_T
// nexus of the logical unit (SPC-4 6.2, "unit attention conditions"); a
// nexus that first reaches the unit later gets POWER ON, RESET, OR BUS DEVICE
// RESET OCCURRED, which tells it to read everything again anyway.

// RefreshCapacity makes the volume's current size (rounded down to whole
// blocks) the capacity the logical unit reports and, when it differs from
// the previous one, raises CAPACITY DATA HAS CHANGED on every I_T nexus.
// It returns the old and new capacity in bytes. Commands in flight keep the
// range checks they made; the next READ CAPACITY of every nexus is preceded
// by the unit attention. Safe for concurrent use.
func (lu *LU) RefreshCapacity() (old, cur int64, changed bool) {
	lu.capacityMu.Lock()
	defer lu.capacityMu.Unlock()
	cur = lu.vol.Size() &^ (int64(lu.blockSize) - 1)
	old = lu.capacity.Swap(cur)
	if old == cur {
		return old, cur, false
	}
	lu.raiseAll(ASCCapacityDataChanged, nil)
	lu.log.Info("scsi: logical unit capacity changed", "lun", lu.lun, "old_bytes", old, "new_bytes", cur)
	return old, cur, true
}

// NotifyCapacityChanged takes the volume's size as the capacity
// (RefreshCapacity) and raises CAPACITY DATA HAS CHANGED on every nexus even
// when the size is the same: for a caller that knows the capacity data
// changed.
func (lu *LU) NotifyCapacityChanged() {
	if _, _, changed := lu.RefreshCapacity(); !changed {
		lu.raiseAll(ASCCapacityDataChanged, nil)
	}
}

// Capacity is the capacity in bytes the logical unit reports.
func (lu *LU) Capacity() int64 { return lu.capacity.Load() }

// blocks returns the capacity in logical blocks.
func (lu *LU) blocks() uint64 { return uint64(lu.capacity.Load()) >> lu.blockShift }

package tcmu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Capacity growth started on our side (the volume behind a device grew).
//
// The TCM-USER netlink family has no command for a handler to announce a
// new size to the kernel: its commands are ADDED_DEVICE, REMOVED_DEVICE,
// RECONFIG_DEVICE (kernel to handler), their *_DONE replies and
// SET_FEATURES; there is no SET_CONFIG or DEV_SIZE request (6.1's
// include/uapi/linux/target_core_user.h). A live resize is a configfs
// write of the device's attrib/dev_size, which the kernel turns into
// RECONFIG_DEVICE with TCMU_ATTR_DEV_SIZE, waits for the handler's
// RECONFIG_DEVICE_DONE and only then takes as LIO's own size
// (tcmu_dev_size_store; tcmu_get_blocks reports it). GrowDevices makes that
// write; this handler answers the RECONFIG it causes like any other
// (reconfigure: the device's capacity changes and every I_T nexus gets
// CAPACITY DATA HAS CHANGED).

// GrowDevices resizes, through LIO, every device serving cfgstring that
// showed the whole volume before it grew from oldSize to newSize: it writes
// newSize to the device's attrib/dev_size. A device configured smaller than
// the volume (dev_size below oldSize) was sized so on purpose and keeps its
// size. It returns how many devices it resized.
//
// The configfs write returns once this handler answered the RECONFIG it
// causes (Run handles each notification in its own goroutine), so it must
// not be called from a notification's handling; ctx bounds the wait (the
// write itself cannot be interrupted and finishes when the handler
// answers).
func (h *Handler) GrowDevices(ctx context.Context, cfgstring string, oldSize, newSize int64) (int, error) {
	h.mu.Lock()
	var devs []*openDevice
	if !h.closing {
		for _, od := range h.devices {
			if od.cfg == cfgstring && od.vol.Size() == oldSize-oldSize%int64(od.vol.BlockSize()) {
				devs = append(devs, od)
			}
		}
	}
	h.mu.Unlock()
	var errs []error
	n := 0
	for _, od := range devs {
		if err := h.setDevSize(ctx, od.dir, newSize); err != nil {
			errs = append(errs, fmt.Errorf("tcmu: device %s: dev_size %d: %w", od.dev.name.configDir(), newSize, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// setDevSize writes dev_size of the device whose configfs directory is dir
// and waits for the write (see GrowDevices) within ctx.
func (h *Handler) setDevSize(ctx context.Context, dir string, size int64) error {
	write := h.writeDevSize
	if write == nil {
		write = func(dir string, size int64) error {
			return os.WriteFile(filepath.Join(dir, "attrib", "dev_size"), []byte(strconv.FormatInt(size, 10)), 0)
		}
	}
	done := make(chan error, 1)
	go func() { done <- write(dir, size) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Package tcmu is cachelun's TCMU front end: the kernel's LIO target runs
// the fabric (iSCSI, FC, vhost, tcm_loop) and hands every SCSI command of a
// `user:cachelun` backstore to this package through a shared-memory ring;
// each command is executed by target/scsi, so TCMU LUNs implement exactly
// the command set iSCSI LUNs do.
//
// # What it speaks
//
//   - Generic netlink family TCM-USER: SET_FEATURES announces that we reply
//     to device notifications; ADDED_DEVICE, REMOVED_DEVICE and
//     RECONFIG_DEVICE are each answered with the matching *_DONE and a
//     status (0 or -errno). Devices of another subtype are refused at once
//     (ENOENT): the kernel blocks the configfs writer until someone
//     answers, and this handler replaces tcmu-runner, so nobody else will.
//   - A device is resized live by a write of its configfs attrib/dev_size,
//     which the kernel turns into RECONFIG_DEVICE: the netlink family has
//     no request by which a handler could announce a new size. When a
//     volume grows, GrowDevices makes that write for the devices that
//     showed the whole volume; the RECONFIG it causes is answered like any
//     other (new capacity, CAPACITY DATA HAS CHANGED on every nexus).
//   - D-Bus service org.kernel.TCMUService1 (system bus): an ObjectManager
//     at /org/kernel/TCMUService1 listing /org/kernel/TCMUService1/<subtype>,
//     which implements org.kernel.TCMUService1 (ConfigDesc property,
//     CheckConfig method). That is how targetcli lists user:cachelun and
//     validates a cfgstring. contrib/dbus/ holds the bus policy.
//   - Per device, /dev/uio<N> mapped whole: the mailbox, the command ring
//     (CMD, PAD and TMR entries) and the data area the entries' iovecs
//     point into. Every command runs in its own goroutine; completions are
//     published out of order (the kernel's OOOC capability) by rewriting the
//     entry at cmd_tail with the finished command's id, then kicking the
//     kernel with a write to the UIO file.
//
// # Guarantees
//
//   - A notification is always answered, success or failure, and failures
//     are logged with the reason (unknown volume, size larger than the
//     volume, volume in use, malformed cfgstring).
//   - Data of a read is copied into the data area before its completion is
//     published; with READ_LEN the kernel returns only the bytes produced,
//     otherwise the rest of the buffer is zeroed so no earlier command's
//     data can leak to an initiator.
//   - Every offset and length read from the ring is bounds-checked; a
//     corrupt ring stops the device (logged), it never panics or touches
//     memory outside the mapping.
//   - On shutdown the handler stops taking new commands, lets the ones in
//     flight finish (Config.ShutdownGrace, then cancels them), flushes the
//     volume, and leaves the devices configured in LIO. At the next start
//     it re-adopts them: block_dev=1, reset_ring=1 (the kernel fails
//     commands the old process left in the ring with BUSY, which initiators
//     retry), reopen and map, block_dev=0.
//
// # Recovery when no daemon answers
//
// While no process serves TCM-USER after SET_FEATURES was sent once (the
// flag is module-global), creating or removing a device blocks the configfs
// writer in D state. Release it with
//
//	echo 1 > /sys/module/target_core_user/parameters/block_netlink
//	echo 1 > /sys/module/target_core_user/parameters/reset_netlink
//
// and keep block_netlink at 1 until the writer gave up (shells and Python
// retry an EINTR write), then write 0 and start the daemon.
//
// # Concurrency and locks
//
// Handler.Run owns the netlink socket; each notification is handled in its
// own goroutine (the kernel has at most one outstanding notification per
// device, so a device's events never race). Lock order: Handler.mu, then
// openDevice.luMu; ring.mu is a leaf taken only by the ring consumer and by
// completing goroutines. No lock is held across volume I/O.
package tcmu

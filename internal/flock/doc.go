// Package flock claims files for one process: the cache files, backing
// files, intent logs and the data directory's lock file of a cachelun
// daemon, and the cache files an offline command (format, check, inspect)
// works on.
//
// Guarantees:
//
//   - A claim is flock(2) on an open file description, taken without
//     waiting (LOCK_NB). An exclusive claim excludes every other claim on
//     the same inode, shared or exclusive, by any process, including a
//     second open of the same file in the same process: flock locks belong
//     to the open file description, not to the process.
//   - A refused claim returns an error wrapping ErrLocked that names what
//     was refused, its path and, when the kernel tells, the pid and command
//     name of the holder. flock does not report the holder; Holder reads it
//     from /proc/locks, which lists every flock lock with the pid of the
//     process that took it and the device and inode it is on. No pid file is
//     needed, so there is nothing stale to trust or clean up.
//   - A claim ends when the descriptor is closed (or the process dies, even
//     by SIGKILL): the kernel releases it, so a crashed daemon never leaves
//     a file locked.
//   - OpenLocked claims a file that its owner may remove (an intent log, a
//     file being created): it checks, after the claim, that the path still
//     names the inode it locked, so a claim is never taken on a file another
//     process has just unlinked. Such a file is removed only by the holder
//     of its claim, before it closes the descriptor.
//
// Block devices are also claimed with O_EXCL by their opener (backend), which
// the kernel enforces against mounts and other exclusive openers; the flock
// claim on the device node adds the holder's pid to the refusal.
//
// The package has no state; every function works on the descriptor or path it
// is given.
package flock

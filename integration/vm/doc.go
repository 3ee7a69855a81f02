// Package vm boots a Debian kernel under qemu (software emulation, no KVM
// needed) to test cachelun against the real kernel LIO/TCMU/tcm_loop path,
// which the test machines' own kernels lack.
//
// Everything comes from Debian packages: the kernel (linux-image-<Kernel>,
// pinned so module paths are stable; override with CACHELUN_VM_KERNEL),
// busybox-static for the guest userland, qemu-system-x86 and kmod on the
// host. Downloads and extracted trees are cached under CacheDir()
// (integration/vm/cache, or CACHELUN_VM_CACHE); preparation takes a file
// lock there, so concurrent test processes share one cache.
//
// A test builds an initramfs (BuildInitramfs: busybox, the module closure
// of the modules it names, its own static binaries and a /init script) and
// boots it (Boot). The guest has no network device unless the test asks
// for one (Boot.UserNet: qemu's user network, on which the guest reaches
// the host's loopback as 10.0.2.2 and nothing beyond); qemu runs with a
// hard timeout. The init script reports through the serial console: lines
// "@@PASS <name>", "@@FAIL <name> <why>" and finally "@@DONE"; Result
// collects them.
//
// Failures explain themselves. Every initramfs and root disk carries
// /etc/vm-diag.sh (guestdiag.sh), which guest scripts source: when a step
// has failed, the script's end prints the guest's diagnostics (tasks in D
// state and their kernel stacks through sysrq-w, SCSI disk and iSCSI
// session states, the last lines of every daemon log, the last 250 lines
// of dmesg) between "@@DIAG begin" and "@@DIAG end". A watchdog in the
// guest fires WatchdogMargin before qemu's hard timeout (Boot passes the
// deadline as cachelun.watchdog= on the kernel command line), so a step
// that never returns (an umount waiting on I/O) is reported too: it sends
// the daemon SIGQUIT (the Go runtime writes every goroutine's stack to the
// daemon log, which the diagnostics print compactly), prints the
// diagnostics and powers the guest off. Tier 2 also bounds the umount and
// e2fsck after the daemon's SIGKILL (90 s each): a step still running then
// fails by name and the diagnostics follow at once, with iscsiadm's view of
// the session (VM_DIAG_CMD). Result.Diag holds these sections;
// Result.Report, which the tiers print on failure, puts them after the
// problems, the guest timeline and the console before them. The daemons
// run inside the guests, so their logs reach the test only this way. A
// guest whose kernel hangs runs no script and no watchdog: one still
// running KernelDumpLead before the timeout gets magic SysRq keys from the
// host through qemu's monitor (console level 9, every CPU's backtrace, the
// blocked tasks), and the report carries what its kernel printed for them
// (TestGuestKernelStacks).
//
// Three tiers run by default in `go test ./integration/vm/` (in parallel):
//
//   - Tier 1 (TestTier1TCMU): busybox initramfs running the real daemon
//     (cachelun serve, [tcmu] enabled, no D-Bus) over a cache file and
//     backing files on tmpfs; raw configfs and tcm_loop: create with
//     cfgstring naming a volume, I/O, daemon killed idle and under I/O and
//     re-adopted, refusals with their reasons, live reconfiguration,
//     removal, clean stop. About 20 s with a warm cache.
//   - Tier 2 (TestTier2TargetcliISCSI): a Debian bookworm rootfs built once
//     with mmdebstrap (targetcli-fb, open-iscsi, dbus; the cached tarball's
//     name carries a digest of RootfsPackages, so a changed package list
//     builds a new one), booted from a virtio
//     ext4 disk, running the real daemon on the system bus with its own
//     iSCSI target on 127.0.0.1:3261: targetcli over D-Bus, LIO iSCSI on
//     127.0.0.1:3260, iscsiadm login, ext4 checksums across remount; then
//     open-iscsi against cachelun's own target, the same round trip and a
//     daemon restart while logged in with a writer running; then, in the
//     same boot, sg_xcopy (sg3-utils) against two LUNs of a second target
//     (xc0, xc1 on a cache that writes back only when drained): INQUIRY
//     3PC and VPD 8Fh, a copy within xc0 and one from xc0 to xc1 (unaligned)
//     of a source half written back (cachelun volume drain over the admin
//     socket) and half dirty in the cache only, read back with O_DIRECT dd
//     and cmp, and in both backing files after a drain; a copy past the end
//     of xc1 fails (COPY ABORTED, non-zero exit) and changes nothing; no
//     I/O error in dmesg. The sg_xcopy steps add about 16 s of guest
//     time (2.5 minutes of qemu wall time for the whole boot, measured
//     under a load of 8-11 on 2 cores). About 1 minute with a warm cache
//     on an idle machine; the first rootfs build adds 1-4 minutes (mirror
//     speed). CACHELUN_VM_TIER2=0 switches it off explicitly (reported as a
//     skip).
//   - Tier 3 (TestTier3DAX): the DAX cache on a real fsdax file system. The
//     busybox guest gets an emulated NVDIMM (Boot.NVDIMM: a sparse host
//     file, memory-backend-file share=on) and a plain ext4 virtio disk made
//     on the host. The first boot (-cpu max) switches the NVDIMM's raw
//     namespace to fsdax through sysfs (a pfn device; no ndctl), makes ext4
//     with e2fsprogs' mke2fs (the host's, copied in with its libraries:
//     GuestMke2fs), mounts it with dax=always and runs the real daemon with
//     one cache there (the log and inspect must say DAX and name the flush
//     instruction CPUID offers) and one on the virtio disk (non-DAX), each
//     behind TCMU + tcm_loop: patterns, a SIGKILL under write load with
//     every block read back whole, check clean, the same QD1 O_DSYNC and
//     write+flush workload on both disks in alternating rounds (the test
//     logs the DAX vs pwrite+fdatasync ratios through the disk and as the
//     daemon timed its SYNCHRONIZE CACHEs, from its /metrics on the
//     guest's loopback; emulated, so only the ratios mean anything, and
//     nothing is asserted on them); then a last pattern is
//     flushed while an unflushed writer runs and qemu is killed when the
//     guest says so (Boot.PowerOffOn): a power cut. The second boot, on
//     the same NVDIMM file with -cpu max without CLWB and CLFLUSHOPT
//     (Boot.CPU), finds the namespace in fsdax, check clean, every flushed
//     pattern back, the cache on DAX with the fallback instruction, and
//     passes the data checks again. Measured only on a busy 2-core
//     machine: about 4 minutes for both boots under a load of 10-20
//     (guest uptime about 90 s per boot; qemu's wall time is larger).
//
// Tier 4 (TestTier4Multipath) carries the ceph build tag, so it runs only
// with -tags ceph (scripts/test.sh runs it alone in its Ceph step): a real
// dm-multipath client of two cluster nodes. The nodes run on the host (the
// daemon built with -tags ceph) over one RBD image of a throwaway Ceph
// cluster (internal/cephtest), their portals on 127.0.0.1 and their peer
// links on 127.0.0.2 and 127.0.0.3; node a owns the volume (ALUA
// active/optimized), node b is standby. The tier-2 rootfs (with
// multipath-tools) boots with Boot.UserNet; the guest starts udevd, iscsid
// and multipathd, logs in to both portals (node records made by hand:
// SendTargets would name 127.0.0.1), and multipath must show one map with
// two path groups, a's path prio 50 and b's a ghost of prio 1
// (group_by_prio, prio alua, hardware_handler "1 alua", path_checker tur;
// testdata/multipath-guest.sh explains its no_path_retry and
// replacement_timeout). ext4 on the map gets 20 fsync'd files; with a
// writer fsyncing one new file after the other, the guest prints
// @@KILL-OWNER and the test (Boot.OnMarker) SIGKILLs node a and deletes its
// cache file; b fences a and takes over after peer_timeout (2 s), the
// guest sees a's session fail and multipath serve through b's path. Every
// file whose fsync returned reads back intact after the page cache is
// dropped and after a remount, e2fsck finds the file system clean, and
// the kernel log has no I/O error on the multipath map, no Buffer I/O
// error and no ext4 error or warning (the killed path's own errors are
// expected). It prints the longest wait between two fsync'd files across
// the kill (about 6 s: the 5 s replacement_timeout of the dead path's
// session, then the retry through b) and how long b took to own the volume
// (about 3 s). About 100 s on an idle 2-core machine with warm caches
// (the daemon's build with the root disk, and the Ceph cluster's start,
// about 15 s each; 60 to 75 s of qemu); a cold cache adds the rootfs build
// as for tier 2.
//
// Tiers 1 to 3 build the daemon from ./cmd/cachelun (static,
// CGO_ENABLED=0); CACHELUN_VM_BINARY names a prebuilt static binary to use
// instead.
//
// The last console logs are kept in the cache as tier1-last.log,
// tier2-last.log, tier3-first-last.log, tier3-second-last.log and
// tier4-last.log (and, when tier 4 fails, its nodes' logs as
// tier4-node-a.log and tier4-node-b.log).
//
// Host requirements: Linux amd64, root (to install missing packages with
// apt-get: qemu-system-x86, kmod, e2fsprogs for tiers 2 and 3), about 500
// MB of cache; for tier 4 the Ceph daemons and librbd-dev (scripts/deps.sh
// installs them). EnsureHost installs what is missing and
// fails with a clear message when it cannot; tests never skip silently.
package vm

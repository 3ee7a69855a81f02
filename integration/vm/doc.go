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
// boots it (Boot). The guest has no network device; qemu runs with a hard
// timeout. The init script reports through the serial console: lines
// "@@PASS <name>", "@@FAIL <name> <why>" and finally "@@DONE"; Result
// collects them.
//
// Two tiers run by default in `go test ./integration/vm/` (in parallel):
//
//   - Tier 1 (TestTier1TCMU): busybox initramfs, the guest daemon
//     cmd/tcmuguest (target/tcmu + target/scsi over file volumes), raw
//     configfs and tcm_loop: create, I/O, daemon killed idle and under I/O
//     and re-adopted, refusals, removal. About 40 s with a warm cache.
//   - Tier 2 (TestTier2TargetcliISCSI): a Debian bookworm rootfs built once
//     with mmdebstrap (targetcli-fb, open-iscsi, dbus), booted from a virtio
//     ext4 disk: targetcli over D-Bus, LIO iSCSI on 127.0.0.1, iscsiadm
//     login, ext4 checksums across remount. About 2 minutes with a warm
//     cache; the first rootfs build adds 1-4 minutes (mirror speed).
//     CACHELUN_VM_TIER2=0 switches it off explicitly (reported as a skip).
//
// The last console logs are kept in the cache as tier1-last.log and
// tier2-last.log.
//
// Host requirements: Linux amd64, root (to install missing packages with
// apt-get), about 500 MB of cache. EnsureHost installs what is missing and
// fails with a clear message when it cannot; tests never skip silently.
package vm

# Failure diagnostics for VM guests. The harness installs this file as
# /etc/vm-diag.sh in every initramfs and root disk; guest scripts source it
# (busybox sh and bash alike) after /proc, /sys and /tmp are mounted.
#
# A guest script sets VM_LOGS to a glob of its daemon log files (and may set
# VM_DIAG_CMD to commands that print more state) and writes the running
# daemon's pid to /tmp/vm-daemon.pid. It calls vm_diag WHY when
# it fails and vm_watchdog_start once: the watchdog fires at the guest
# uptime Boot.Run put on the kernel command line (cachelun.watchdog=SECONDS,
# some seconds before qemu's hard timeout), so a guest stuck in a step that
# never returns (an umount waiting for I/O) still reports what it saw.
# Everything goes to the serial console between "@@DIAG begin WHY" and
# "@@DIAG end", which Result.Diag collects.

t() { echo "@@T $(cut -d' ' -f1 /proc/uptime) $*"; }
pass() { echo "@@PASS $*"; }
fail() { echo "$1" >> /tmp/vm-failed; echo "@@FAIL $*"; }
vm_failed() { [ -s /tmp/vm-failed ]; }

# vm_diag WHY: blocked tasks, disk state, the daemon logs and the kernel log.
vm_diag() {
  echo "@@DIAG begin $*"
  echo "---- uptime $(cut -d' ' -f1 /proc/uptime)s; failed steps: $(tr '\n' ' ' < /tmp/vm-failed 2>/dev/null)"
  echo "---- tasks in D state"
  for p in /proc/[0-9]*; do
    s=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' $p/status 2>/dev/null)
    [ "$s" = D ] && echo "${p#/proc/} $(tr '\0' ' ' < $p/cmdline 2>/dev/null) wchan=$(cat $p/wchan 2>/dev/null)"
  done
  # Stacks of the blocked tasks go to the kernel log, printed below.
  echo w > /proc/sysrq-trigger 2>/dev/null
  echo "---- SCSI disks (in flight: reads writes)"
  for d in /sys/block/sd*; do
    [ -e "$d" ] && echo "${d##*/} state=$(cat $d/device/state 2>/dev/null) inflight=$(cat $d/inflight 2>/dev/null)"
  done
  for s in /sys/class/iscsi_session/session*; do
    [ -e "$s" ] && echo "${s##*/} target=$(cat $s/targetname 2>/dev/null) state=$(cat $s/state 2>/dev/null)"
  done
  # A script's own state worth printing (e.g. the initiator's sessions).
  [ -n "$VM_DIAG_CMD" ] && eval "$VM_DIAG_CMD"
  for f in $VM_LOGS; do
    [ -f "$f" ] || continue
    echo "---- daemon log $f (last 60 lines)"
    sed '/^SIGQUIT/,$d' "$f" | grep -v "MAP_SYNC\|non-DAX" | tail -n 60
    if grep -q "^SIGQUIT" "$f"; then
      # Every goroutine's header and its first frames outside the runtime
      # (where it waits), without addresses: compact enough to print whole.
      echo "---- daemon goroutines ($f: header and first 5 frames outside the runtime)"
      sed -n '/^SIGQUIT/,$p' "$f" | awk '
        /^goroutine /    { print; n = 0; keep = 0; next }
        /^\t/            { if (keep) { sub(/ (\+0x|fp=).*/, ""); print } next }
        /^created by /   { keep = 0; next }
        /^[^ \t].*\(/    { keep = ($0 !~ /^(runtime|internal)[\/.]/) && n < 5; if (keep) { n++; print } }
      ' | head -n 1500
    fi
  done
  echo "---- dmesg (last 250 lines)"
  dmesg | tail -n 250
  echo "@@DIAG end"
}

vm_watchdog_start() {
  wd=$(sed -n 's/.*cachelun\.watchdog=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
  [ -n "$wd" ] || return 0
  (
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$wd" ]; do sleep 1; done
    echo "@@FAIL watchdog the guest was still running at ${wd}s uptime"
    echo watchdog >> /tmp/vm-failed
    # SIGQUIT makes the Go daemon write every goroutine's stack to its log.
    p=$(cat /tmp/vm-daemon.pid 2>/dev/null)
    [ -n "$p" ] && kill -QUIT "$p" 2>/dev/null && sleep 2
    vm_diag watchdog
    sync
    echo o > /proc/sysrq-trigger 2>/dev/null
    poweroff -f
  ) &
}

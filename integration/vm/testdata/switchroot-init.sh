#!/bin/sh
# /init of the tier-2 initramfs: mount the Debian root image (virtio disk)
# and hand PID 1 to the guest test script inside it.
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "@@T $(cut -d' ' -f1 /proc/uptime) initramfs"
for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done
i=0; while [ $i -lt 100 ] && [ ! -b /dev/vda ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { . /etc/vm-diag.sh; fail mount-root "no /dev/vda"; vm_diag "failed steps"; echo "@@DONE"; poweroff -f; }
umount /proc /sys /dev
exec switch_root /newroot /root/guest-test.sh

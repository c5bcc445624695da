#!/bin/sh
# kiln guest init: PID 1 of every kiln microVM, from the initramfs kiln builds.
# Disks are found by their virtio serial (kimage, kwork, kscratch, kout), never by probe
# order. Lines starting with @@kiln- are read by the host; everything between
# the job-start and job-end lines is the job's log.
# Under TCG every process costs milliseconds: shell builtins (read, echo,
# case) stand in for cat, cut and friends wherever they can.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

read -r cmdline < /proc/cmdline
nonce="" probe="" net=""
for word in $cmdline; do
    case "$word" in
        kiln.nonce=*) nonce=${word#*=} ;;
        kiln.probe=*) probe=${word#*=} ;;
        kiln.net=*) net=${word#*=} ;;
    esac
done
fail() {
    echo "@@kiln-setup-failed-$nonce@@ $*"
    sync
    poweroff -f
}

if [ "$probe" = 1 ]; then
    echo "@@kiln-probe-ok@@"
    poweroff -f
fi

load_modules() {
    while read -r module; do
        insmod "/lib/modules/$module.ko" || fail "cannot load kernel module $module"
    done < "$1"
}
load_modules /lib/modules/order
[ "$net" = 1 ] && load_modules /lib/modules/order-net

tries=0
while :; do
    for block in /sys/block/vd*; do
        [ -e "$block/serial" ] || continue
        read -r serial < "$block/serial"
        case "$serial" in
            kimage) disk_image=/dev/${block##*/} ;;
            kwork) disk_work=/dev/${block##*/} ;;
            kscratch) disk_scratch=/dev/${block##*/} ;;
            kout) disk_out=/dev/${block##*/} ;;
        esac
    done
    [ -b "$disk_image" ] && [ -b "$disk_work" ] && [ -b "$disk_scratch" ] && [ -b "$disk_out" ] && break
    tries=$((tries + 1))
    [ "$tries" -gt 50 ] && fail "virtio disks not found (image=$disk_image work=$disk_work scratch=$disk_scratch out=$disk_out)"
    usleep 100000
done

mkdir -p /mnt/image /mnt/rw /mnt/work /newroot
mount -t ext4 -o ro,noload "$disk_image" /mnt/image || fail "cannot mount the image disk"
mount -t ext4 -o ro,noload "$disk_work" /mnt/work || fail "cannot mount the workspace disk"
mount -t ext4 -o noinit_itable "$disk_scratch" /mnt/rw || fail "cannot mount the scratch disk"
mkdir -p /mnt/rw/root/upper /mnt/rw/root/work /mnt/rw/job/upper /mnt/rw/job/work
mount -t overlay -o lowerdir=/mnt/image,upperdir=/mnt/rw/root/upper,workdir=/mnt/rw/root/work root /newroot \
    || fail "cannot mount the root overlay"
read -r workspace < /mnt/work/job/workspace
read -r lowerdirs < /mnt/work/job/lowerdirs
read -r hostname < /mnt/work/job/hostname
mkdir -p "/newroot$workspace" /newroot/proc /newroot/sys /newroot/dev /newroot/tmp \
    || fail "cannot create the workspace $workspace"
mount -t overlay -o "lowerdir=$lowerdirs,upperdir=/mnt/rw/job/upper,workdir=/mnt/rw/job/work" \
    workspace "/newroot$workspace" || fail "cannot mount the workspace overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs -o mode=1777 tmp /newroot/tmp || fail "cannot mount /tmp"
echo "$hostname" > /proc/sys/kernel/hostname
ip link set lo up
if [ "$net" = 1 ]; then
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
        || fail "cannot configure the network"
    mkdir -p /newroot/etc && echo "nameserver 10.0.2.3" > /newroot/etc/resolv.conf
fi

# Only emergencies (panics) may interleave with the job's output from here on.
echo "1 4 1 7" > /proc/sys/kernel/printk
read -r uptime rest < /proc/uptime
echo "@@kiln-job-start-$nonce@@ $uptime"
(. /mnt/work/job/run.sh)
status=$?
echo
echo "@@kiln-job-end-$nonce@@ $status"

# Nothing the job started may write to the upper layer while it is captured.
kill -9 -1 2>/dev/null

# Opaque directories (deleted and made anew by the job) carry an xattr that
# busybox cannot read. A directory of the upper layer is opaque when an entry
# of the lower layers under it is neither visible in the merged view nor
# whited out in the upper layer: list those for the host to mark.
case "$lowerdirs" in
    *:*) mkdir -p /mnt/lowers && mount -t overlay -o "lowerdir=$lowerdirs" lowers /mnt/lowers && lowers=/mnt/lowers ;;
    *) lowers=$lowerdirs ;;
esac
merged="/newroot$workspace"
cd /mnt/rw/job/upper && find . -mindepth 1 -type d | while read -r dir; do
    [ -d "$lowers/$dir" ] || continue
    for entry in "$lowers/$dir"/* "$lowers/$dir"/.[!.]* "$lowers/$dir"/..?*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        name=${entry##*/}
        [ -e "$merged/$dir/$name" ] || [ -L "$merged/$dir/$name" ] || [ -c "$dir/$name" ] || {
            echo "${dir#./}"
            break
        }
    done
done > /mnt/rw/job/opaque
cd /
umount -l "$merged"
echo "$status" > /mnt/rw/job/status
cd /mnt/rw/job && { echo status; echo opaque; find upper; } | cpio -o -H newc > "$disk_out" 2>/dev/null \
    || echo "@@kiln-output-failed-$nonce@@"
sync
poweroff -f

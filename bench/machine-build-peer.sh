#!/usr/bin/env bash
# Peer for a machine-image build benchmark: mkosi 14 (Debian 12's package) builds a Debian
# bookworm disk with linux-image-cloud-amd64, an initramfs, systemd, systemd-networkd (DHCP) and
# openssh-server from the machine's apt mirror, as a GPT disk with one ext4 root partition
# (Format=gpt_ext4). Kiln's comparison (another script) adds its own figures.
#
# Not Bootable=yes: mkosi 14 makes only UEFI images, and it mounts their FAT ESP through a loop
# device, which a kernel without vfat (this machine's) refuses. So the disk has no boot loader,
# like Kiln's qcow2 booted with QEMU's -kernel/-initrd; a postinst builds the initramfs that
# mkosi 14 leaves out of a non-bootable image. See bench/mkosi-notes.md.
#
#   cold:  empty package cache, no incremental cache (mkosi -ff: packages downloaded again)
#   warm:  package cache kept from the cold run (packages installed again, not downloaded)
#   incr:  --incremental with its cached image made once beforehand (only the final steps run)
# Each run's disk is checked: a GPT with an ext4 root labelled root that holds
# /boot/vmlinuz-*, /boot/initrd.img-*, sshd and a networkd DHCP unit. No assertions on time.
#
# Usage: bash bench/machine-build-peer.sh          (as root; needs loop devices)
# Env:   RUNS (default 3), MIRROR (default: this machine's Debian mirror), KILN_BENCH_CACHE
#        (default /var/tmp/kiln-bench), KEEP_WORK=1.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_runs
((EUID == 0)) || die "mkosi needs root (loop devices, mounts, systemd-nspawn)"
need mkosi:mkosi debugfs:e2fsprogs sfdisk:fdisk
losetup -f >/dev/null 2>&1 || die "no free loop device (losetup -f); mkosi 14's disk formats need one"
MIRROR=${MIRROR:-$(debian_mirror)}

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-mkosi.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PROJECT=$WORK/project
mkdir -p "$PROJECT/mkosi.extra/etc/systemd/network" "$WORK/out" "$WORK/cache"
cat >"$PROJECT/mkosi.default" <<EOF
[Distribution]
Distribution=debian
Release=bookworm
Mirror=$MIRROR

[Output]
Format=gpt_ext4
Bootable=no
Output=$WORK/out/image.raw

[Content]
Packages=linux-image-cloud-amd64,initramfs-tools,systemd,systemd-sysv,udev,dbus,openssh-server
Cache=$WORK/cache

[Host]
# systemd-nspawn cannot make its own scope unit without a system bus (no systemd as PID 1 here).
NspawnKeepUnit=yes
EOF
cat >"$PROJECT/mkosi.extra/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
cat >"$PROJECT/mkosi.postinst" <<'EOF'
#!/bin/sh
# mkosi 14 builds no initramfs for a non-bootable image; the virtio drivers are modules.
set -e
if [ "$1" = final ]; then
    update-initramfs -c -k all
    systemctl enable systemd-networkd.service
fi
EOF
chmod +x "$PROJECT/mkosi.postinst"

# build LABEL ARGS... -> SECONDS (the disk is checked)
build() {
    local label=$1 start end log=$WORK/$1.log
    shift
    start=$(now)
    (cd "$PROJECT" && mkosi "$@" build >"$log" 2>&1) || { tail -n 20 "$log" >&2; die "mkosi $* build failed ($label); log: $log"; }
    end=$(now)
    check_disk "$WORK/out/image.raw" "$label"
    SECONDS_TAKEN=$(elapsed "$start" "$end")
}

check_disk() {
    local disk=$1 label=$2 start listing
    start=$(sfdisk --json "$disk" | jq '.partitiontable.partitions[0].start') || die "$label: $disk has no partition table"
    local part="$disk?offset=$((start * 512))"
    [[ $(blkid -p -o value -s LABEL -O $((start * 512)) "$disk") == root ]] || die "$label: no ext4 root labelled root"
    listing=$(debugfs -R 'ls /boot' "$part" 2>/dev/null)
    grep -q 'vmlinuz-' <<<"$listing" || die "$label: no /boot/vmlinuz-*"
    grep -q 'initrd.img-' <<<"$listing" || die "$label: no /boot/initrd.img-*"
    debugfs -R 'stat /usr/sbin/sshd' "$part" 2>/dev/null | grep -q 'Type: regular' || die "$label: no sshd"
    debugfs -R 'stat /etc/systemd/network/80-dhcp.network' "$part" 2>/dev/null | grep -q 'Type: regular' \
        || die "$label: no networkd DHCP unit"
    DISK_BYTES=$(stat -c %s "$disk") DISK_USED=$(($(stat -c %b "$disk") * 512))
}

cold=() warm=() incr=()
for run in $(seq 1 "$RUNS"); do
    rm -rf "${WORK:?}/cache" && mkdir -p "$WORK/cache"
    build cold --force --force && cold+=("$SECONDS_TAKEN")
    build warm --force && warm+=("$SECONDS_TAKEN")
    build incr-seed --force --force --incremental
    build incr --force --incremental && incr+=("$SECONDS_TAKEN")
    log "run $run: cold ${cold[-1]} s, warm ${warm[-1]} s, incremental ${incr[-1]} s"
done

echo
echo "machine-build-peer: mkosi $(mkosi --version 2>/dev/null | awk '{print $2}'), debian bookworm gpt_ext4 from $MIRROR, $RUNS runs, load at start $LOAD_AT_START"
printf '%-44s %8s   %s\n' "mkosi cold (no package cache)" "$(median "${cold[@]}")s" "(${cold[*]})"
printf '%-44s %8s   %s\n' "mkosi warm (package cache)" "$(median "${warm[@]}")s" "(${warm[*]})"
printf '%-44s %8s   %s\n' "mkosi --incremental (cached image)" "$(median "${incr[@]}")s" "(${incr[*]})"
echo "disk: $(mib "$DISK_BYTES") MiB raw, $(mib "$DISK_USED") MiB allocated"
echo "RESULT machine-build-peer cold=$(median "${cold[@]}")s warm=$(median "${warm[@]}")s incremental=$(median "${incr[@]}")s"

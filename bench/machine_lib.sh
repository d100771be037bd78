# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared by disk-assembly.sh and machine-boot.sh, after lib.sh: the kiln binary and the machine
# parent's root filesystem. Sourced, not run.

MACHINE_DATA=$CACHE/kiln-data                 # Kiln's store holding bootstrap/debian-vm:bookworm
MACHINE_ROOTFS=$CACHE/rootfs-bookworm-vm
MACHINE_ROOTFS_DONE=$MACHINE_ROOTFS.complete  # outside the tree, so it is not assembled

# The kiln binary: $KILN, else a release build made under the machine's build lock.
build_kiln() {
    if [[ -z ${KILN:-} ]]; then
        export PATH=/opt/swift/usr/bin:$PATH
        log "building kiln (release) in $REPO_DIR, waiting for /tmp/kiln-build.lock"
        (cd "$REPO_DIR" && flock /tmp/kiln-build.lock swift build -c release --product kiln >&2) || die "swift build failed"
        KILN=$REPO_DIR/.build/release/kiln
    fi
    resolve_kiln
}

# The tools MachineDisk drives (gptmbr.bin is a file, so syslinux-common is checked by path).
need_disk_tools() {
    need qemu-img:qemu-utils mkfs.ext4:e2fsprogs debugfs:e2fsprogs sfdisk:fdisk mkfs.fat:dosfstools \
        syslinux:syslinux mcopy:mtools tar:tar python3:python3
    if [[ ! -f /usr/lib/syslinux/mbr/gptmbr.bin ]]; then
        log "installing syslinux-common with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q syslinux-common >&2 || die "could not install syslinux-common"
    fi
}

# bootstrap:debian:bookworm:vm, made once by `kiln image pull` (mmdebstrap, about a minute) in
# $MACHINE_DATA and unpacked once into $MACHINE_ROOTFS: the tree Kiln's machine images start from.
ensure_machine_rootfs() {
    if [[ -f $MACHINE_ROOTFS_DONE && -d $MACHINE_ROOTFS ]]; then
        log "machine rootfs: $MACHINE_ROOTFS (cached, $(du -sh "$MACHINE_ROOTFS" | cut -f1))"
        return
    fi
    need mmdebstrap:mmdebstrap
    local layout=$CACHE/vm-layout layer tmp=$CACHE/rootfs-vm.tmp.$$
    rm -rf "$MACHINE_ROOTFS" "$MACHINE_ROOTFS_DONE" "$layout" "$tmp"
    mkdir -p "$CACHE"
    log "making bootstrap:debian:bookworm:vm with kiln in $MACHINE_DATA (mmdebstrap, once)"
    "$KILN" image pull bootstrap:debian:bookworm:vm --data-dir "$MACHINE_DATA" >&2 || die "kiln image pull failed"
    "$KILN" image copy kiln:bootstrap/debian-vm:bookworm "oci-layout:$layout:vm" --data-dir "$MACHINE_DATA" --quiet >&2 \
        || die "kiln image copy failed"
    layer=$(python3 - "$layout" <<'PY'
import json, sys
root = sys.argv[1]
def blob(digest):
    return json.load(open(f"{root}/blobs/sha256/{digest.split(':', 1)[1]}"))
manifest = blob(json.load(open(f"{root}/index.json"))["manifests"][0]["digest"])
layers = manifest["layers"]
if len(layers) != 1:
    sys.exit(f"expected one layer, found {len(layers)}")
print(layers[0]["digest"].split(":", 1)[1])
PY
    ) || die "cannot read the machine parent's layer from $layout"
    mkdir -p "$tmp"
    tar -C "$tmp" --numeric-owner -xpf "$layout/blobs/sha256/$layer" || { rm -rf "$tmp"; die "unpacking the layer failed"; }
    mv "$tmp" "$MACHINE_ROOTFS"
    rm -rf "$layout"
    touch "$MACHINE_ROOTFS_DONE"
    log "machine rootfs: $MACHINE_ROOTFS ($(du -sh "$MACHINE_ROOTFS" | cut -f1))"
}

# stamp_lines FILE: copies stdin to FILE, each line prefixed with the epoch time it arrived.
stamp_lines() {
    local line
    while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$1"
}

# stamp_of FILE PATTERN: the time of the first stamped line matching PATTERN (grep -E).
stamp_of() {
    grep -E -m1 "$2" "$1" | cut -d' ' -f1
}

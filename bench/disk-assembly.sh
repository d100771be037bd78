#!/usr/bin/env bash
# Benchmark: a root filesystem folder into a bootable machine disk.
#   Kiln:  `kiln disk assemble TREE --volume-size GIB` (MachineDisk.assemble, release build): copies
#          and generalises the tree, writes a GPT (FAT boot partition + ext4 root), mkfs.ext4 -d at
#          the root's offset, mkfs.fat + SYSLINUX + kernel and initramfs into the boot partition,
#          gptmbr.bin, then qemu-img convert to qcow2.
#   Peer:  the floor any such tool stands on: `mkfs.ext4 -d TREE` over a whole file of the same
#          size, then `qemu-img convert -O qcow2` (no partition table, no bootloader, no copy).
# Both take the machine parent bootstrap:debian:bookworm:vm (about 370 MB), read once first so
# both start with a warm page cache; the runs alternate which goes first. Reports the medians,
# the ratio Kiln/peer, the qcow2 sizes and the median of Kiln's steps (from its progress lines).
# Each result is checked (Kiln: two partitions, ext4 kiln-root and vfat KILN-BOOT; peer: ext4
# with the tree's kernel). No assertions on time.
#
# Usage: bash bench/disk-assembly.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: a release build under /tmp/kiln-build.lock),
#        VOLUME_GIB (default 2), KILN_BENCH_CACHE (default /var/tmp/kiln-bench), KEEP_WORK=1.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BENCH_DIR/machine_lib.sh"

VOLUME_GIB=${VOLUME_GIB:-2}
check_runs
[[ $VOLUME_GIB =~ ^[1-9][0-9]*$ ]] || die "VOLUME_GIB must be a positive integer (got '$VOLUME_GIB')"
need_disk_tools
build_kiln
ensure_machine_rootfs
TREE=$MACHINE_ROOTFS

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-disk.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "reading $TREE once (warm page cache)"
tar -C "$TREE" -cf - . | cat >/dev/null

# run_kiln RUN -> sets KILN_SECONDS, KILN_QCOW2 and the STEP_* seconds of this run
run_kiln() {
    local out=$WORK/kiln-$1 start end
    rm -rf "$out"
    start=$(now)
    "$KILN" disk assemble "$TREE" --volume-size "$VOLUME_GIB" --output "$out" 2> >(stamp_lines "$WORK/kiln-$1.err") >"$WORK/kiln-$1.out" \
        || { cat "$WORK/kiln-$1.err" >&2; die "kiln disk assemble failed"; }
    end=$(now)
    sleep 0.2 # the stamping reader finishes its last line
    KILN_SECONDS=$(elapsed "$start" "$end")
    local e=$WORK/kiln-$1.err gpt ext4 fat convert
    gpt=$(stamp_of "$e" 'writing a GPT') ext4=$(stamp_of "$e" 'making the ext4') fat=$(stamp_of "$e" 'installing SYSLINUX')
    convert=$(stamp_of "$e" 'converting .* to qcow2')
    STEP_COPY=$(elapsed "$start" "$gpt") STEP_GPT=$(elapsed "$gpt" "$ext4") STEP_EXT4=$(elapsed "$ext4" "$fat")
    STEP_BOOT=$(elapsed "$fat" "$convert") STEP_QCOW2=$(elapsed "$convert" "$end")
    # What was made is what the test checks.
    local raw=$out/disk.raw partitions
    partitions=$(sfdisk --json "$raw" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["partitiontable"]["partitions"]))')
    [[ $partitions == 2 ]] || die "Kiln's disk has $partitions partitions, not 2"
    blkid -p -O $((129 << 20)) -o export "$raw" | grep -q '^LABEL=kiln-root$' || die "no ext4 kiln-root at 129 MiB in $raw"
    blkid -p -O $((1 << 20)) -o export "$raw" | grep -q '^TYPE=vfat$' || die "no FAT boot partition at 1 MiB in $raw"
    KILN_QCOW2=$(stat -c %s "$out/disk.qcow2")
    rm -rf "$out"
}

# run_peer RUN -> sets PEER_SECONDS, PEER_QCOW2
run_peer() {
    local out=$WORK/peer-$1 start end
    rm -rf "$out"
    mkdir -p "$out"
    start=$(now)
    truncate -s "${VOLUME_GIB}G" "$out/disk.raw"
    mkfs.ext4 -q -F -t ext4 -L kiln-root -d "$TREE" -E nodiscard "$out/disk.raw" >&2 || die "mkfs.ext4 -d failed"
    qemu-img convert -f raw -O qcow2 "$out/disk.raw" "$out/disk.qcow2" || die "qemu-img convert failed"
    end=$(now)
    PEER_SECONDS=$(elapsed "$start" "$end")
    debugfs -R 'ls /boot' "$out/disk.raw" 2>/dev/null | grep -q vmlinuz- || die "the peer's filesystem has no /boot/vmlinuz-*"
    PEER_QCOW2=$(stat -c %s "$out/disk.qcow2")
    rm -rf "$out"
}

kiln_times=() peer_times=() copy=() gpt=() ext4=() boot=() qcow2=()
for run in $(seq 1 "$RUNS"); do
    if ((run % 2)); then run_kiln "$run"; run_peer "$run"; else run_peer "$run"; run_kiln "$run"; fi
    kiln_times+=("$KILN_SECONDS") peer_times+=("$PEER_SECONDS")
    copy+=("$STEP_COPY") gpt+=("$STEP_GPT") ext4+=("$STEP_EXT4") boot+=("$STEP_BOOT") qcow2+=("$STEP_QCOW2")
    log "run $run: kiln $KILN_SECONDS s (copy+generalise $STEP_COPY, gpt $STEP_GPT, ext4 $STEP_EXT4, boot partition $STEP_BOOT, qcow2 $STEP_QCOW2), mkfs.ext4+qemu-img $PEER_SECONDS s"
done

kiln_median=$(median "${kiln_times[@]}")
peer_median=$(median "${peer_times[@]}")
r=$(ratio "$kiln_median" "$peer_median")
echo
echo "disk-assembly: $(du -sh "$TREE" | cut -f1) tree into a $VOLUME_GIB GiB disk, $RUNS runs, $(machine_line), load at start $LOAD_AT_START"
printf '%-34s %8s   %s\n' "kiln disk assemble" "${kiln_median}s" "(${kiln_times[*]}) qcow2 $(mib "$KILN_QCOW2") MiB"
printf '%-34s %8s   %s\n' "mkfs.ext4 -d + qemu-img convert" "${peer_median}s" "(${peer_times[*]}) qcow2 $(mib "$PEER_QCOW2") MiB"
printf '%-34s %8s\n' "ratio kiln/peer" "$r"
echo "kiln's steps (medians): copy+generalise $(median "${copy[@]}")s, gpt $(median "${gpt[@]}")s, ext4 $(median "${ext4[@]}")s, boot partition $(median "${boot[@]}")s, qcow2 $(median "${qcow2[@]}")s"
echo "RESULT disk-assembly kiln=${kiln_median}s peer=${peer_median}s ratio=$r kiln-qcow2=$KILN_QCOW2 peer-qcow2=$PEER_QCOW2"

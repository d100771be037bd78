#!/usr/bin/env bash
# Benchmark: a machine disk into an AMI whose root filesystem is a parent-image layer.
#   Kiln:  `kiln image import-disk DISK.qcow2` (DiskImport + DiskRootReader, release build) into a
#          fresh data directory: qemu-img convert to the AMI's qcow2, a sparse raw copy, the root
#          partition listed by inode and dumped with debugfs, the tree made (modes, owners, links,
#          devices, capabilities), then packed into a gzip layer.
#   Peer:  the same job with stock tools: `qemu-img convert -O qcow2` (the AMI's copy),
#          `qemu-img convert -O raw`, `debugfs -R "rdump / OUT"` at the root's offset, and
#          `tar --numeric-owner -czf` of OUT (GNU tar, gzip -6 as Kiln's layer).
# The disk is assembled once by `kiln disk assemble` from the machine parent
# bootstrap:debian:bookworm:vm (about 370 MB of files). Runs alternate which goes first. Reports
# the medians, the ratio Kiln/peer and Kiln's steps; each result is checked, and the set-uid,
# set-gid and sticky entries of each output are counted against the source tree, which shows
# what rdump drops. No assertions on time.
#
# Usage: bash bench/disk-import.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: a release build under /tmp/kiln-build.lock),
#        KILN_BENCH_CACHE (default /var/tmp/kiln-bench), KEEP_WORK=1.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BENCH_DIR/machine_lib.sh"

check_runs
need_disk_tools
build_kiln
ensure_machine_rootfs
TREE=$MACHINE_ROOTFS

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-import.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "assembling the disk to import from $TREE"
"$KILN" disk assemble "$TREE" --volume-size 2 --output "$WORK/source" >"$WORK/assemble.out" 2>&1 \
    || { cat "$WORK/assemble.out" >&2; die "kiln disk assemble failed"; }
DISK=$WORK/source/disk.qcow2
ROOT_OFFSET=$((129 << 20)) # MachineDisk's root partition
# Special-mode entries of a tar listing (set-uid, set-gid, sticky): what a faithful copy keeps.
special_modes() { tar -tvzf "$1" | awk '$1 ~ /[sStT]/' | wc -l; }
SOURCE_SPECIAL=$(find "$TREE" \( -perm -4000 -o -perm -2000 -o -perm -1000 \) -not -path '*/etc/ssh/ssh_host_*' | wc -l)
log "disk: $DISK ($(mib "$(stat -c %s "$DISK")") MiB qcow2); $SOURCE_SPECIAL set-id or sticky entries in the tree"

# run_kiln RUN -> sets KILN_SECONDS, KILN_SPECIAL and the STEP_* seconds of this run
run_kiln() {
    local data=$WORK/kiln-$1 err=$WORK/kiln-$1.err start end
    rm -rf "$data"
    start=$(now)
    "$KILN" image import-disk "$DISK" --name bench-import --data-dir "$data" 2> >(stamp_lines "$err") >"$WORK/kiln-$1.json" \
        || { sleep 0.2; cat "$err" >&2; die "kiln image import-disk failed"; }
    end=$(now)
    sleep 0.2 # the stamping reader finishes its last line
    KILN_SECONDS=$(elapsed "$start" "$end")
    local located listed dumped packing
    located=$(stamp_of "$err" 'root filesystem: ') listed=$(stamp_of "$err" '^[0-9.]+ listed ')
    dumped=$(stamp_of "$err" '^[0-9.]+ read [0-9]+ bytes') packing=$(stamp_of "$err" 'packing the root filesystem')
    STEP_CONVERT=$(elapsed "$start" "$located") STEP_LIST=$(elapsed "$located" "$listed") STEP_READ=$(elapsed "$listed" "$dumped")
    STEP_PACK=$(elapsed "$packing" "$end")
    local layer
    layer=$(python3 - "$WORK/kiln-$1.json" "$data" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
if record.get("status") != "AVAILABLE" or not record.get("localName"):
    sys.exit(f"the import is not an AVAILABLE parent: {record.get('status')} {record.get('machineImage', {}).get('parentRefusal')}")
root = sys.argv[2] + "/content"
def blob(digest):
    return root + "/blobs/sha256/" + digest.split(":", 1)[1]
manifest = json.load(open(blob(record["digest"])))
print(blob(manifest["layers"][0]["digest"]))
PY
    ) || die "cannot find Kiln's layer"
    KILN_SPECIAL=$(special_modes "$layer")
    rm -rf "$data"
}

# run_peer RUN -> sets PEER_SECONDS, PEER_SPECIAL
run_peer() {
    local out=$WORK/peer-$1 start end
    rm -rf "$out"
    mkdir -p "$out/root"
    start=$(now)
    qemu-img convert -f qcow2 -O qcow2 "$DISK" "$out/ami.qcow2" || die "qemu-img convert failed"
    qemu-img convert -f qcow2 -O raw "$DISK" "$out/disk.raw" || die "qemu-img convert failed"
    debugfs -R "rdump / $out/root" "$out/disk.raw?offset=$ROOT_OFFSET" >/dev/null 2>"$out/debugfs.err" \
        || { cat "$out/debugfs.err" >&2; die "debugfs rdump failed"; }
    tar -C "$out/root" --numeric-owner -czf "$out/layer.tar.gz" . || die "tar failed"
    end=$(now)
    PEER_SECONDS=$(elapsed "$start" "$end")
    [[ -f $out/root/usr/bin/passwd ]] || die "the peer's tree has no /usr/bin/passwd"
    PEER_SPECIAL=$(special_modes "$out/layer.tar.gz")
    rm -rf "$out"
}

kiln_times=() peer_times=() convert=() list=() read=() pack=()
for run in $(seq 1 "$RUNS"); do
    if ((run % 2)); then run_kiln "$run"; run_peer "$run"; else run_peer "$run"; run_kiln "$run"; fi
    kiln_times+=("$KILN_SECONDS") peer_times+=("$PEER_SECONDS")
    convert+=("$STEP_CONVERT") list+=("$STEP_LIST") read+=("$STEP_READ") pack+=("$STEP_PACK")
    log "run $run: kiln $KILN_SECONDS s (convert $STEP_CONVERT, list $STEP_LIST, read $STEP_READ, pack $STEP_PACK), qemu-img+rdump+tar $PEER_SECONDS s"
done

[[ $KILN_SPECIAL == "$SOURCE_SPECIAL" ]] || log "warning: Kiln's layer has $KILN_SPECIAL set-id/sticky entries, the tree $SOURCE_SPECIAL"
kiln_median=$(median "${kiln_times[@]}")
peer_median=$(median "${peer_times[@]}")
r=$(ratio "$kiln_median" "$peer_median")
echo
echo "disk-import: a 2 GiB disk of $(du -sh "$TREE" | cut -f1), $RUNS runs, $(machine_line), load at start $LOAD_AT_START"
printf '%-40s %8s   %s\n' "kiln image import-disk" "${kiln_median}s" "(${kiln_times[*]}) set-id/sticky kept: $KILN_SPECIAL of $SOURCE_SPECIAL"
printf '%-40s %8s   %s\n' "qemu-img x2 + debugfs rdump + tar -czf" "${peer_median}s" "(${peer_times[*]}) set-id/sticky kept: $PEER_SPECIAL of $SOURCE_SPECIAL"
printf '%-40s %8s\n' "ratio kiln/peer" "$r"
echo "kiln's steps (medians): convert $(median "${convert[@]}")s, list $(median "${list[@]}")s, read $(median "${read[@]}")s, pack $(median "${pack[@]}")s"
echo "RESULT disk-import kiln=${kiln_median}s peer=${peer_median}s ratio=$r kiln-special=$KILN_SPECIAL peer-special=$PEER_SPECIAL source-special=$SOURCE_SPECIAL"

#!/usr/bin/env bash
# Benchmark: turn a Debian bookworm minbase root filesystem (~180 MB) into one gzip'd tar layer.
#   Kiln:     kiln image pack DIR NAME --source-date-epoch 0 --level 6   (fresh data dir each run;
#             includes writing the layer, config and manifest into Kiln's content store)
#   tar+gzip: tar -C DIR --sort=name --numeric-owner -cf - . | gzip -6 > out.tar.gz
# Reports the median wall time of each over RUNS runs, the ratio kiln/tar-gzip (lower is better
# for Kiln) and both output sizes. No assertions on time; it fails only when a command fails.
#
# Usage: bash bench/pack-layer.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: swift build -c release --product kiln),
#        KILN_BENCH_CACHE (default /var/tmp/kiln-bench; holds the bootstrapped rootfs),
#        KEEP_WORK=1 keeps the work directory.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_runs
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap and packing a root filesystem need it)"
need mmdebstrap:mmdebstrap python3:python3 gzip:gzip
resolve_kiln
ensure_rootfs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-pack.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"          # so no ./kiln.yaml is picked up
unset KILN_CONFIG SOURCE_DATE_EPOCH

rootfs_bytes=$(du -sb "$ROOTFS" | cut -f1)
# Warm the page cache with the rootfs, so the first contender is not penalised.
tar -C "$ROOTFS" -cf - . >/dev/null

layer_size() { # DATA_DIR NAME -> size of layers[0] from kiln image inspect
    "$KILN" image inspect "kiln:$2" --data-dir "$1" \
        | python3 -c 'import json,sys; m=json.load(sys.stdin); l=m["layers"]; assert len(l)==1, l; print(l[0]["size"], l[0]["digest"])'
}

KILN_TIMES=(); TAR_TIMES=(); KILN_SIZES=(); KILN_LAYERS=(); TAR_SIZES=()
for run in $(seq 1 "$RUNS"); do
    data=$WORK/kiln-data-run$run
    mkdir -p "$data"
    t0=$(now)
    digest=$("$KILN" image pack "$ROOTFS" bench/debian:bookworm --source-date-epoch 0 --level 6 --data-dir "$data") \
        || die "kiln image pack failed (run $run)"
    t1=$(now)
    t=$(elapsed "$t0" "$t1")
    read -r size layer < <(layer_size "$data" bench/debian:bookworm)
    log "run $run kiln:     ${t}s  layer $size bytes $layer (image $digest)"
    KILN_TIMES+=("$t"); KILN_SIZES+=("$size"); KILN_LAYERS+=("$layer")
    rm -rf "$data"

    t0=$(now)
    tar -C "$ROOTFS" --sort=name --numeric-owner -cf - . | gzip -6 >"$WORK/out.tar.gz"
    t1=$(now)
    t=$(elapsed "$t0" "$t1")
    size=$(stat -c %s "$WORK/out.tar.gz")
    log "run $run tar-gzip: ${t}s  $size bytes"
    TAR_TIMES+=("$t"); TAR_SIZES+=("$size")
    rm -f "$WORK/out.tar.gz"
done

K=$(median "${KILN_TIMES[@]}")
T=$(median "${TAR_TIMES[@]}")
R=$(ratio "$K" "$T")
KS=${KILN_SIZES[0]}
TS=${TAR_SIZES[0]}
layers=$(printf '%s\n' "${KILN_LAYERS[@]}" | sort -u | wc -l)

echo
echo "pack-layer: rootfs $ROOTFS ($(mib "$rootfs_bytes") MiB), gzip level 6, $RUNS run(s)"
echo "machine: $(machine_line); load average at start $LOAD_AT_START, at end $(cut -d" " -f1-3 /proc/loadavg)"
echo "kiln:    $KILN"
printf '%-9s %-26s %10s %14s\n' tool "runs (s)" "median (s)" "output (MiB)"
printf '%-9s %-26s %10s %14s\n' kiln "${KILN_TIMES[*]}" "$K" "$(mib "$KS")"
printf '%-9s %-26s %10s %14s\n' tar-gzip "${TAR_TIMES[*]}" "$T" "$(mib "$TS")"
if ((layers == 1)); then
    echo "kiln layer identical in all runs: ${KILN_LAYERS[0]}"
else
    echo "NOTE: kiln produced $layers different layer digests across runs: ${KILN_LAYERS[*]}"
fi
echo "ratio kiln/tar-gzip: time $R, size $(ratio "$KS" "$TS")"
echo "RESULT pack-layer kiln=${K}s tar-gzip=${T}s ratio=$R kiln-size=$KS tar-gzip-size=$TS"

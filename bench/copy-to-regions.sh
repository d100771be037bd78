#!/usr/bin/env bash
# Benchmark: distribute one ~170 MB Debian image from a source registry to 3 "region" registries.
#   Kiln:   ONE `kiln image copy SRC D1 D2 D3` (each blob read once, written to all 3 at once),
#           starting from an empty content store, so it must pull from the source registry.
#   skopeo: THREE sequential `skopeo copy SRC Dn`.
# Every contender gets 3 fresh, empty destination registries in every run. Reports the median wall
# time of each over RUNS runs and the ratio kiln/skopeo (lower is better for Kiln). No assertions
# on time; it fails only when a copy fails or the 3 destinations disagree on the manifest digest.
#
# Usage: bash bench/copy-to-regions.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: swift build -c release --product kiln),
#        KILN_BENCH_CACHE (default /var/tmp/kiln-bench; holds the bootstrapped rootfs),
#        KEEP_WORK=1 keeps the work directory.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_runs
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap and packing a root filesystem need it)"
need mmdebstrap:mmdebstrap skopeo:skopeo docker-registry:docker-registry curl:curl python3:python3
resolve_kiln
ensure_rootfs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-copy.XXXXXX")
cleanup() {
    stop_registries
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"          # so no ./kiln.yaml is picked up
unset KILN_CONFIG

# --- the image: pack the rootfs into Kiln's store, export it as an OCI layout, push to SOURCE ---
export KILN_DATA_DIR=$WORK/kiln-data
log "packing $ROOTFS into kiln:bench/debian:bookworm"
packed=$("$KILN" image pack "$ROOTFS" bench/debian:bookworm --source-date-epoch 0)
log "packed: $packed"
"$KILN" image copy kiln:bench/debian:bookworm "oci-layout:$WORK/layout:bookworm" --quiet >/dev/null
unset KILN_DATA_DIR

start_registry "$WORK/reg-src"
SRC=127.0.0.1:$REG_PORT
log "source registry: $SRC"
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/layout:bookworm" "docker://$SRC/bench/debian:bookworm"
SRC_REF=$SRC/bench/debian:bookworm

manifest_digest() { # REF (host:port/repo:tag) -> sha256:… of the manifest bytes
    local sum
    sum=$(skopeo inspect --tls-verify=false --raw "docker://$1" | sha256sum | cut -d' ' -f1)
    echo "sha256:$sum"
}
SRC_DIGEST=$(manifest_digest "$SRC_REF")
image_bytes=$(du -sb "$WORK/reg-src/data" | cut -f1)
log "source image: $SRC_REF $SRC_DIGEST ($(mib "$image_bytes") MiB in the registry)"

# Warm the page cache with the source registry's blobs, so the first contender is not penalised.
find "$WORK/reg-src/data" -type f -exec cat {} + >/dev/null

# start 3 fresh destination registries; sets DESTS=(host:port ...) and DEST_PIDS
new_regions() {
    local tag=$1 i
    DESTS=(); DEST_PIDS=()
    for i in 1 2 3; do
        start_registry "$WORK/reg-$tag-d$i"
        DESTS+=("127.0.0.1:$REG_PORT"); DEST_PIDS+=("$REG_PID")
    done
}
drop_regions() {
    local tag=$1 pid
    for pid in "${DEST_PIDS[@]}"; do stop_registry "$pid"; done
    rm -rf "$WORK"/reg-"$tag"-d?
}
# verify_regions NAME REPO: all 3 destinations must hold the same manifest; prints its digest
verify_regions() {
    local name=$1 repo=$2 d digest first=""
    for d in "${DESTS[@]}"; do
        digest=$(manifest_digest "$d/$repo") || die "$name: cannot read $d/$repo"
        if [[ -z $first ]]; then first=$digest
        elif [[ $digest != "$first" ]]; then die "$name: $d/$repo has $digest, but ${DESTS[0]}/$repo has $first"
        fi
    done
    echo "$first"
}

KILN_TIMES=(); SKOPEO_TIMES=(); KILN_DIGESTS=(); SKOPEO_DIGESTS=()
for run in $(seq 1 "$RUNS"); do
    # --- Kiln: one command, three destinations, empty store ---
    new_regions "k$run"
    data=$WORK/kiln-data-run$run
    mkdir -p "$data"
    args=()
    for d in "${DESTS[@]}"; do args+=("$d/r/debian:1"); done
    t0=$(now)
    out=$(KILN_DATA_DIR=$data "$KILN" image copy "$SRC_REF" "${args[@]}" --quiet) \
        || die "kiln image copy failed (run $run)"
    t1=$(now)
    t=$(elapsed "$t0" "$t1")
    digest=$(verify_regions kiln r/debian:1)
    [[ $out == *"$digest"* ]] || log "NOTE: kiln printed '$out', destinations hold $digest"
    log "run $run kiln:   ${t}s  3/3 regions = $digest"
    KILN_TIMES+=("$t"); KILN_DIGESTS+=("$digest")
    drop_regions "k$run"
    rm -rf "$data"

    # --- skopeo: three sequential copies ---
    new_regions "s$run"
    t0=$(now)
    for d in "${DESTS[@]}"; do
        skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
            "docker://$SRC_REF" "docker://$d/s/debian:1" || die "skopeo copy to $d failed (run $run)"
    done
    t1=$(now)
    t=$(elapsed "$t0" "$t1")
    digest=$(verify_regions skopeo s/debian:1)
    log "run $run skopeo: ${t}s  3/3 regions = $digest"
    SKOPEO_TIMES+=("$t"); SKOPEO_DIGESTS+=("$digest")
    drop_regions "s$run"
done

K=$(median "${KILN_TIMES[@]}")
S=$(median "${SKOPEO_TIMES[@]}")
R=$(ratio "$K" "$S")

echo
echo "copy-to-regions: 1 source -> 3 regions, image $(mib "$image_bytes") MiB, $RUNS run(s)"
echo "machine: $(machine_line); load average at start $LOAD_AT_START, at end $(cut -d" " -f1-3 /proc/loadavg)"
echo "kiln:    $KILN"
echo "source manifest: $SRC_DIGEST"
printf '%-8s %-34s %10s   %s\n' tool "runs (s)" "median (s)" "manifest in all 3 regions"
printf '%-8s %-34s %10s   %s\n' kiln "${KILN_TIMES[*]}" "$K" "$(printf '%s\n' "${KILN_DIGESTS[@]}" | sort -u | tr '\n' ' ')"
printf '%-8s %-34s %10s   %s\n' skopeo "${SKOPEO_TIMES[*]}" "$S" "$(printf '%s\n' "${SKOPEO_DIGESTS[@]}" | sort -u | tr '\n' ' ')"
echo "ratio kiln/skopeo: $R (target <= 0.5)"
echo "RESULT copy-to-regions kiln=${K}s skopeo=${S}s ratio=$R"

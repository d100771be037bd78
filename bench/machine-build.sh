#!/usr/bin/env bash
# Benchmark: a whole machine-image build, cold and warm, against mkosi 14 (issue 15).
#   Kiln:  `kiln build -f pipeline.yaml` of an image recipe on bootstrap:debian:bookworm:vm with one
#          component (ExecuteBash: apt-get update, apt-get install --no-install-recommends dbus, the
#          one package mkosi's configuration has that Kiln's machine parent lacks), a 3 GiB root
#          volume (mkosi's disk is 3 GiB too) and one distribution to a directory region (lab) with
#          amiDistributionConfiguration. Each build: BUILD in runc, the disk assembled (GPT, ext4
#          root, FAT boot partition with SYSLINUX, generalised, raw + qcow2), DISTRIBUTE copies the
#          qcow2 into the region.
#            cold:         a new, empty data directory, so the machine parent is bootstrapped too
#                          (mmdebstrap), tests off (imageTestsEnabled: false; mkosi tests nothing)
#            warm:         the same command again: every step from the layer cache (no builder; the
#                          package step's freshness check asks the mirror), the disk assembled and
#                          distributed again
#            warm, tested: the same recipe through a second pipeline with tests on: TEST boots the
#                          disk in QEMU and runs the component's test phase and Kiln's suites over
#                          SSH (security: pendingUpdates and setuid off, see the pipeline below). What
#                          a real pipeline does; no peer.
#   Peer:  bench/machine-build-peer.sh with RUNS=1 (mkosi 14, gpt_ext4, not bootable: cold with
#          no package cache, warm with it, --incremental with its cached image).
# The runs alternate which tool goes first. Reports medians of wall time, Kiln's stage timings
# from its image record (`timings`), and the ratios kiln cold / mkosi cold, kiln warm / mkosi
# --incremental (mkosi's closest warm analogue) and kiln warm / mkosi warm. Every Kiln build is
# checked: AVAILABLE, an AMI, warm builds a cache hit, the disk's root holds dbus-daemon, the
# region's copy equal to the record's digest, the tested build's report without failures. No
# assertions on time.
#
# Usage: bash bench/machine-build.sh       (as root: runc, loop devices for mkosi, QEMU)
# Env:   RUNS (default 1; each run is several minutes), KILN (kiln binary; default: a release
#        build under /tmp/kiln-build.lock; kiln-init must be next to it or in KILN_INIT),
#        MIRROR (mkosi's; Kiln uses the host's Debian mirror), KILN_BENCH_CACHE, KEEP_WORK=1.
set -euo pipefail

RUNS=${RUNS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BENCH_DIR/machine_lib.sh"

check_runs
((EUID == 0)) || die "run as root (runc builders, mkosi's loop devices, QEMU)"
need_disk_tools
need runc:runc mmdebstrap:mmdebstrap qemu-system-x86_64:qemu-system-x86 ssh:openssh-client ssh-keygen:openssh-client \
    jq:jq mkosi:mkosi
build_kiln
if [[ -n ${KILN_INIT:-} ]]; then
    [[ -x $KILN_INIT ]] || die "KILN_INIT=$KILN_INIT is not an executable file"
elif [[ ! -x $(dirname "$KILN")/kiln-init ]]; then
    log "building kiln-init (release) in $REPO_DIR, waiting for /tmp/kiln-build.lock"
    (cd "$REPO_DIR" && flock /tmp/kiln-build.lock swift build -c release --product kiln-init >&2) || die "swift build failed"
fi
KILN_INIT=$(readlink -f "${KILN_INIT:-$(dirname "$KILN")/kiln-init}")
export KILN_INIT
log "kiln-init: $KILN_INIT"
ACCELERATOR=$("$KILN" disk accelerator 2>/dev/null | head -n1 || echo unknown)
log "accelerator: $ACCELERATOR"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-machine-build.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; return; fi
    # A build killed half-way may leave a builder's overlay mounted in its data directory.
    if grep -q " $WORK/" /proc/mounts; then log "mounts left under $WORK; not removing it"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The definitions: one component, one image recipe, two pipelines (tests off, tests on).
cat >"$WORK/dbus.yaml" <<'EOF'
name: Dbus
description: what mkosi's package list has beyond Kiln's machine parent
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Install
        action: ExecuteBash
        inputs:
          commands:
            - set -e
            - apt-get update -qq
            - DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dbus >/dev/null
  - name: test
    steps:
      - name: SystemBus
        action: ExecuteBash
        inputs:
          commands: ["test -S /run/dbus/system_bus_socket", "busctl --system list >/dev/null"]
EOF
cat >"$WORK/pipeline.yaml" <<'EOF'
components:
  - {name: dbus, semanticVersion: 1.0.0, platform: Linux, uri: dbus.yaml}
imageRecipes:
  - name: bench-machine
    semanticVersion: 1.0.0
    parentImage: bootstrap:debian:bookworm:vm
    components: [{componentArn: dbus/1.x.x}]
    blockDeviceMappings: [{deviceName: /dev/xvda, ebs: {volumeSize: 3}}]
infrastructureConfigurations:
  - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
distributionConfigurations:
  - name: lab
    distributions:
      - region: lab
        amiDistributionConfiguration: {name: "bench {{ imagebuilder:buildDate }}", amiTags: {bench: machine-build}}
imagePipelines:
  - name: bench
    imageRecipeArn: bench-machine/1.x.x
    infrastructureConfigurationArn: builders
    distributionConfigurationArn: lab
    imageTestsConfiguration: {imageTestsEnabled: false}
    kilnTests: {security: {pendingUpdates: false}}
  - name: bench-tested
    imageRecipeArn: bench-machine/1.x.x
    infrastructureConfigurationArn: builders
    distributionConfigurationArn: lab
    imageTestsConfiguration: {imageTestsEnabled: true}
    kilnTests: {security: {pendingUpdates: false, setuid: false}}
EOF
# setuid: false because dbus installs its activation helper setuid root by design
# (/usr/lib/dbus-1.0/dbus-daemon-launch-helper), which the suite's "no new SUID/SGID files" refuses.

# run_kiln RUN LABEL PIPELINE -> sets K_WALL, K_PARENT (start to the parent being ready), K_BUILD,
# K_ASSEMBLE, K_TEST, K_DISTRIBUTE (record timings; "-" when absent), K_CACHEHIT, K_QCOW2 (bytes)
run_kiln() {
    local run=$1 label=$2 pipeline=$3 dir=$WORK/run-$1 start end out err
    out=$dir/$label.json err=$dir/$label.err
    start=$(now)
    "$KILN" build -f "$WORK/pipeline.yaml" --pipeline "$pipeline" --config "$dir/kiln.yaml" \
        2> >(stamp_lines "$err") >"$out" || { sleep 0.2; tail -n 30 "$err" >&2; die "kiln build ($label) failed"; }
    end=$(now)
    sleep 0.2 # the stamping reader finishes its last line
    K_WALL=$(elapsed "$start" "$end")
    local parent vars
    parent=$(stamp_of "$err" 'BUILD: parent ' || true)
    K_PARENT=$([[ -n $parent ]] && elapsed "$start" "$parent" || echo -)
    vars=$(python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("status") != "AVAILABLE" or r.get("type") != "AMI":
    sys.exit(f"kiln build: status {r.get('status')}, type {r.get('type')}: {r.get('failure')}")
t = {}
for s in r.get("timings", []):
    t[s["stage"]] = t.get(s["stage"], 0) + s["seconds"]
m = r["machineImage"]
copies = [c for c in m.get("copies", []) if c.get("region") == "lab"]
if not copies:
    sys.exit(f"no copy in region lab: {m}")
def f(stage):
    return "%.2f" % t[stage] if stage in t else "-"
# DISTRIBUTE times container copies, DISTRIBUTE-DISK the disk copies; a machine image has the second.
if "DISTRIBUTE-DISK" in t:
    t["DISTRIBUTE"] = t.get("DISTRIBUTE", 0) + t["DISTRIBUTE-DISK"]
print(f"K_BUILD={f('BUILD')} K_ASSEMBLE={f('ASSEMBLE')} K_TEST={f('TEST')} K_DISTRIBUTE={f('DISTRIBUTE')}")
print(f"K_CACHEHIT={str(r.get('cacheHit')).lower()} K_QCOW2={m['bytes']} K_DIGEST={m['digest']}")
print(f"K_RAW={m['raw']} K_COPY={copies[0]['location']} K_REPORT={r.get('testResults') or ''}")
print(f"K_TIMINGS='{' '.join('%s=%.2f' % (s['stage'], s['seconds']) for s in r.get('timings', []))}'")
PY
    ) || die "kiln build ($label): the record says it did not work (see $out)"
    eval "$vars"
    # What was made is what the benchmark claims.
    [[ "sha256:$(sha256sum "$K_COPY" | cut -c1-64)" == "$K_DIGEST" ]] || die "$label: the copy in region lab differs from $K_DIGEST"
    debugfs -R 'stat /usr/bin/dbus-daemon' "$K_RAW?offset=$((129 << 20))" 2>/dev/null | grep -q 'Type: regular' \
        || die "$label: the disk's root has no /usr/bin/dbus-daemon"
    if [[ $pipeline == bench-tested ]]; then
        [[ -f $K_REPORT ]] || die "$label: no test report"
        grep -q '<failure' "$K_REPORT" && die "$label: a test failed: $K_REPORT"
        grep -q 'name="SystemBus"' "$K_REPORT" || die "$label: the component's test phase did not run: $K_REPORT"
    fi
    log "run $run kiln $label: ${K_WALL} s wall (parent ready at ${K_PARENT} s; $K_TIMINGS; cacheHit $K_CACHEHIT; qcow2 $(mib "$K_QCOW2") MiB)"
}

# run_mkosi RUN -> sets M_COLD, M_WARM, M_INCR (one run of bench/machine-build-peer.sh)
run_mkosi() {
    local out=$WORK/run-$1/mkosi.out result
    RUNS=1 KEEP_WORK=0 bash "$BENCH_DIR/machine-build-peer.sh" >"$out" 2>"$WORK/run-$1/mkosi.err" \
        || { tail -n 20 "$WORK/run-$1/mkosi.err" >&2; die "bench/machine-build-peer.sh failed"; }
    result=$(grep '^RESULT machine-build-peer ' "$out") || die "no RESULT line from machine-build-peer.sh"
    M_COLD=$(sed -E 's/.* cold=([0-9.]+)s.*/\1/' <<<"$result")
    M_WARM=$(sed -E 's/.* warm=([0-9.]+)s.*/\1/' <<<"$result")
    M_INCR=$(sed -E 's/.* incremental=([0-9.]+)s.*/\1/' <<<"$result")
    MKOSI_DISK=$(grep '^disk:' "$out" || true)
    log "run $1 mkosi: cold $M_COLD s, warm $M_WARM s, incremental $M_INCR s"
}

kiln_side() {
    local run=$1 dir=$WORK/run-$1
    rm -rf "$dir/data" "$dir/lab"
    # data/tmp made beforehand: a build with tests off writes its region's AMI document there
    # without creating it (DISTRIBUTE failed with "The file doesn't exist" in a new data directory).
    mkdir -p "$dir/data/tmp" "$dir/lab"
    cat >"$dir/kiln.yaml" <<EOF
dataDirectory: $dir/data
regions:
  lab: {imageStore: {directory: $dir/lab}}
EOF
    run_kiln "$run" cold bench
    [[ $K_CACHEHIT == false ]] || die "the cold build was a cache hit"
    kc+=("$K_WALL") kc_parent+=("$K_PARENT") kc_build+=("$K_BUILD") kc_asm+=("$K_ASSEMBLE") kc_dist+=("$K_DISTRIBUTE")
    run_kiln "$run" warm bench
    [[ $K_CACHEHIT == true ]] || log "warning: run $run's warm build was not a cache hit (the mirror changed?)"
    kw+=("$K_WALL") kw_build+=("$K_BUILD") kw_asm+=("$K_ASSEMBLE") kw_dist+=("$K_DISTRIBUTE") kw_hit+=("$K_CACHEHIT")
    run_kiln "$run" warm-tested bench-tested
    kt+=("$K_WALL") kt_build+=("$K_BUILD") kt_asm+=("$K_ASSEMBLE") kt_test+=("$K_TEST") kt_dist+=("$K_DISTRIBUTE")
    QCOW2=$K_QCOW2
    rm -rf "$dir/data" "$dir/lab" # several GiB a run
}

kc=() kc_parent=() kc_build=() kc_asm=() kc_dist=() kw=() kw_build=() kw_asm=() kw_dist=() kw_hit=()
kt=() kt_build=() kt_asm=() kt_test=() kt_dist=() mc=() mw=() mi=()
for run in $(seq 1 "$RUNS"); do
    mkdir -p "$WORK/run-$run"
    if ((run % 2)); then kiln_side "$run"; run_mkosi "$run"; else run_mkosi "$run"; kiln_side "$run"; fi
    mc+=("$M_COLD") mw+=("$M_WARM") mi+=("$M_INCR")
done

row() { printf '%-52s %9s   %s\n' "$1" "$2s" "$3"; }
kcm=$(median "${kc[@]}") kwm=$(median "${kw[@]}") ktm=$(median "${kt[@]}")
mcm=$(median "${mc[@]}") mwm=$(median "${mw[@]}") mim=$(median "${mi[@]}")
echo
echo "machine-build: Debian bookworm machine image, $RUNS run(s), $(machine_line), accelerator $ACCELERATOR, load at start $LOAD_AT_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
row "kiln cold (parent bootstrapped, no tests)" "$kcm" "(${kc[*]}) parent ready $(median "${kc_parent[@]}")s, BUILD $(median "${kc_build[@]}")s, ASSEMBLE $(median "${kc_asm[@]}")s, DISTRIBUTE $(median "${kc_dist[@]}")s"
row "kiln warm (cache hit, no tests)" "$kwm" "(${kw[*]}) BUILD $(median "${kw_build[@]}")s, ASSEMBLE $(median "${kw_asm[@]}")s, DISTRIBUTE $(median "${kw_dist[@]}")s, cacheHit ${kw_hit[*]}"
row "kiln warm, tested (boot in QEMU, suites over SSH)" "$ktm" "(${kt[*]}) BUILD $(median "${kt_build[@]}")s, ASSEMBLE $(median "${kt_asm[@]}")s, TEST $(median "${kt_test[@]}")s, DISTRIBUTE $(median "${kt_dist[@]}")s"
row "mkosi cold (no package cache)" "$mcm" "(${mc[*]})"
row "mkosi warm (package cache)" "$mwm" "(${mw[*]})"
row "mkosi --incremental (cached image)" "$mim" "(${mi[*]})"
echo "kiln qcow2 $(mib "$QCOW2") MiB (3 GiB disk); mkosi ${MKOSI_DISK:-disk: ?}"
printf '%-52s %9s\n' "ratio kiln cold / mkosi cold" "$(ratio "$kcm" "$mcm")"
printf '%-52s %9s\n' "ratio kiln warm / mkosi --incremental" "$(ratio "$kwm" "$mim")"
printf '%-52s %9s\n' "ratio kiln warm / mkosi warm" "$(ratio "$kwm" "$mwm")"
echo "RESULT machine-build kiln-cold=${kcm}s mkosi-cold=${mcm}s ratio-cold=$(ratio "$kcm" "$mcm") kiln-warm=${kwm}s mkosi-incremental=${mim}s ratio-warm-incremental=$(ratio "$kwm" "$mim") mkosi-warm=${mwm}s ratio-warm-warm=$(ratio "$kwm" "$mwm") kiln-warm-tested=${ktm}s kiln-test=$(median "${kt_test[@]}")s"

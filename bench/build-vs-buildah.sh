#!/usr/bin/env bash
# Benchmark: build an image from the same parent with the same four steps, cold and warm.
#   Kiln:    kiln build -f pipeline.yaml   (a container recipe with 4 components, each one AWSTOE
#            ExecuteBash step; image tests off, no distribution)
#   buildah: buildah bud --layers -f Containerfile   (FROM the same parent, one RUN per component,
#            each RUN running bash on the exact same script text as the component)
# The parent is the Debian bookworm minbase rootfs packed into an OCI archive, imported into each
# tool's own fresh store before timing (both see the same manifest digest), and each tool builds a
# throw-away one-RUN image from it first, so both have the parent unpacked and their code paths
# warm, but neither has built these steps. Then, per run: a cold build (new store), and a warm
# build (the same inputs again, each tool's own cache: Kiln's build cache, buildah's --layers).
# The fourth step installs a package from a local apt repository (a .deb made here, served on
# loopback), so Kiln's warm build checks package freshness as it does for any recipe that
# installs packages: the index files of the image's apt sources (Debian's mirror and the local
# repository) are fetched from the host and compared with the last check. buildah checks
# nothing. A second Kiln warm build with `kilnCache: {packageUpdates: ignore}` shows what the
# check costs.
# Reports the median wall time of each over RUNS runs and the ratios kiln/buildah (lower is better
# for Kiln). No assertions on time; it fails only when a build fails, the parent digests differ, or
# the two images disagree on the files the steps wrote.
#
# Usage: bash bench/build-vs-buildah.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: swift build -c release --product kiln),
#        KILN_INIT (default: kiln-init next to the kiln binary, built with it when KILN is unset),
#        KILN_BENCH_CACHE (default /var/tmp/kiln-bench; holds the bootstrapped rootfs),
#        KEEP_WORK=1 keeps the work directory (definitions, Containerfile, logs).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_runs
[[ $(id -u) == 0 ]] || die "run as root (runc, overlayfs, mmdebstrap and buildah's storage need it)"
need mmdebstrap:mmdebstrap buildah:buildah runc:runc python3:python3 gzip:gzip
kiln_given=${KILN:-}
resolve_kiln
# kiln build starts builder instances with kiln-init, which kiln looks for next to itself.
if [[ -n ${KILN_INIT:-} ]]; then
    [[ -x $KILN_INIT ]] || die "KILN_INIT=$KILN_INIT is not an executable file"
elif [[ ! -x $(dirname "$KILN")/kiln-init ]]; then
    [[ -z $kiln_given ]] || die "no kiln-init next to $KILN; set KILN_INIT"
    log "building kiln-init (release) in $REPO_DIR"
    (cd "$REPO_DIR" && swift build -c release --product kiln-init >&2) || die "swift build failed"
fi
KILN_INIT=$(readlink -f "${KILN_INIT:-$(dirname "$KILN")/kiln-init}")
export KILN_INIT
log "kiln-init: $KILN_INIT"
ensure_rootfs

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-build.XXXXXX")
# every mount under DIR (buildah's overlay, anything a stopped build left), deepest first
unmount_under() {
    local target
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r target; do
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done
}
cleanup() {
    if [[ -n ${REPO_PID:-} ]]; then kill "$REPO_PID" 2>/dev/null || true; fi
    unmount_under "$WORK"
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"          # so no ./kiln.yaml is picked up
unset KILN_CONFIG KILN_DATA_DIR SOURCE_DATE_EPOCH BUILDAH_LAYERS BUILDAH_ISOLATION BUILDAH_FORMAT

PARENT_NAME=bench/debian:bookworm
IMAGE_NAME=bench/kiln-vs-buildah:1.0.0

# --- the parent: the rootfs packed once into an OCI archive, the input both tools import ---
log "packing $ROOTFS into $WORK/parent.tar (oci-archive)"
"$KILN" image pack "$ROOTFS" "$PARENT_NAME" --source-date-epoch 0 --data-dir "$WORK/pack" >/dev/null
"$KILN" image copy "kiln:$PARENT_NAME" "oci-archive:$WORK/parent.tar:bookworm" --data-dir "$WORK/pack" --quiet >/dev/null
rm -rf "$WORK/pack"
PARENT=oci-archive:$WORK/parent.tar:bookworm
read -r PARENT_DIGEST PARENT_LAYERS < <("$KILN" image inspect "$PARENT" \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["digest"], len(m["layers"]))') \
    || die "cannot inspect $PARENT"
parent_bytes=$(stat -c %s "$WORK/parent.tar")
log "parent: $PARENT $PARENT_DIGEST ($(mib "$parent_bytes") MiB)"

# --- a local apt repository with one package, on loopback ---
need dpkg-deb:dpkg-dev dpkg-scanpackages:dpkg-dev
REPO=$WORK/apt-repo
mkdir -p "$REPO" "$WORK/bench-hello/DEBIAN" "$WORK/bench-hello/usr/share/bench-hello"
printf 'Package: bench-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Kiln bench <bench@kiln.invalid>\nDescription: bench package\n' >"$WORK/bench-hello/DEBIAN/control"
echo 1.0 >"$WORK/bench-hello/usr/share/bench-hello/version"
chmod -R u=rwX,go=rX "$WORK/bench-hello"
dpkg-deb --root-owner-group -Zgzip --build "$WORK/bench-hello" "$REPO/bench-hello_1.0_all.deb" >/dev/null
(cd "$REPO" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages)
REPO_PORT=$(free_port)
# On 0.0.0.0: Kiln's builders have their own network and reach the host as host.kiln.internal;
# buildah (host network) gets that name mapped to 127.0.0.1 with --add-host.
python3 -m http.server "$REPO_PORT" --bind 0.0.0.0 --directory "$REPO" >/dev/null 2>&1 &
REPO_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$REPO_PORT/Packages" >/dev/null && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$REPO_PORT/Packages" >/dev/null || die "the local apt repository did not start"
log "apt repository: http://host.kiln.internal:$REPO_PORT/ (bench-hello 1.0)"

# --- the work: four scripts; each is one component's ExecuteBash step and one RUN line ---
# The first three use no network; the fourth installs bench-hello from the local repository.
mkdir -p "$WORK/project/components" "$WORK/logs"
STEP_NAMES=(files-and-cpu users-and-data edit-config install-package)
STEP_SCRIPTS=()
STEP_SCRIPTS+=("$(cat <<'EOF'
set -eu
mkdir -p /opt/bench/files
for i in $(seq 1 500); do printf 'file %d of the bench image\n' "$i" > /opt/bench/files/f$i.txt; done
head -c 268435456 /dev/zero | sha256sum > /opt/bench/zeros.sha256
EOF
)")
# 20 MiB: a 64 KiB gzip-output seed repeated; the period is longer than deflate's 32 KiB window,
# so the file is as incompressible as random data, and the same bytes in every build.
STEP_SCRIPTS+=("$(cat <<'EOF'
set -eu
groupadd --gid 2000 app
useradd --uid 2000 --gid app --create-home --shell /bin/bash app
useradd --system --no-create-home --shell /usr/sbin/nologin svc
seq 1 100000 | gzip -9 -n | head -c 65536 > /tmp/seed
for i in $(seq 1 8); do cat /tmp/seed; done > /tmp/seed512k
for i in $(seq 1 40); do cat /tmp/seed512k; done > /home/app/data.bin
rm /tmp/seed /tmp/seed512k
chown app:app /home/app/data.bin
test "$(stat -c %s /home/app/data.bin)" = 20971520
EOF
)")
STEP_SCRIPTS+=("$(cat <<'EOF'
set -eu
sed -i 's/^UMASK.*/UMASK\t\t027/' /etc/login.defs
sed -i 's/^PASS_MAX_DAYS.*/PASS_MAX_DAYS\t90/' /etc/login.defs
printf 'listen = 0.0.0.0:8080\nworkers = 2\nlog_level = info\n' > /etc/bench.conf
sed -i 's/^log_level = .*/log_level = warn/' /etc/bench.conf
echo 'Built by bench/build-vs-buildah.sh' > /etc/motd
grep -q '^UMASK.*027' /etc/login.defs
EOF
)")
# Only the local list is updated, so the step does not depend on Debian's mirror; the image
# keeps Debian's sources, which the freshness check fingerprints too.
STEP_SCRIPTS+=("set -eu
echo 'deb [trusted=yes] http://host.kiln.internal:$REPO_PORT/ ./' > /etc/apt/sources.list.d/bench.list
apt-get update -qq -o Dir::Etc::SourceList=/etc/apt/sources.list.d/bench.list -o Dir::Etc::SourceParts=-
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dir::Etc::SourceList=/etc/apt/sources.list.d/bench.list -o Dir::Etc::SourceParts=- bench-hello >/dev/null
test \"\$(cat /usr/share/bench-hello/version)\" = 1.0")

# Kiln: one component document per script (the script as one ExecuteBash command).
for i in "${!STEP_NAMES[@]}"; do
    {
        printf 'name: %s\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n' "${STEP_NAMES[i]}"
        printf '      - name: Run\n        action: ExecuteBash\n        inputs:\n          commands:\n            - |\n'
        printf '%s\n' "${STEP_SCRIPTS[i]}" | sed 's/^/              /'
    } >"$WORK/project/components/${STEP_NAMES[i]}.yaml"
done
cat >"$WORK/project/pipeline.yaml" <<EOF
components:
  - {name: files-and-cpu, semanticVersion: 1.0.0, platform: Linux, uri: components/files-and-cpu.yaml}
  - {name: users-and-data, semanticVersion: 1.0.0, platform: Linux, uri: components/users-and-data.yaml}
  - {name: edit-config, semanticVersion: 1.0.0, platform: Linux, uri: components/edit-config.yaml}
  - {name: install-package, semanticVersion: 1.0.0, platform: Linux, uri: components/install-package.yaml}
containerRecipes:
  - name: bench
    semanticVersion: 1.0.0
    containerType: DOCKER
    parentImage: kiln:$PARENT_NAME
    components:
      - componentArn: files-and-cpu/1.0.0
      - componentArn: users-and-data/1.0.0
      - componentArn: edit-config/1.0.0
      - componentArn: install-package/1.0.0
    dockerfileTemplateData: |
      FROM {{{ imagebuilder:parentImage }}}
      {{{ imagebuilder:environments }}}
      {{{ imagebuilder:components }}}
  # built once before timing, so the parent's layer is unpacked in Kiln's layer cache
  - name: warmup
    semanticVersion: 1.0.0
    containerType: DOCKER
    parentImage: kiln:$PARENT_NAME
    dockerfileTemplateData: |
      FROM {{{ imagebuilder:parentImage }}}
      RUN ["true"]
infrastructureConfigurations:
  - {name: builders, instanceTypes: [t3.medium], terminateInstanceOnFailure: true}
imagePipelines:
  - name: bench
    containerRecipeArn: bench/1.0.0
    infrastructureConfigurationArn: builders
    imageTestsConfiguration: {imageTestsEnabled: false}
  # the same recipe (so the same cache) with the freshness check switched off
  - name: bench-nocheck
    containerRecipeArn: bench/1.0.0
    infrastructureConfigurationArn: builders
    imageTestsConfiguration: {imageTestsEnabled: false}
    kilnCache: {packageUpdates: ignore}
  - name: warmup
    containerRecipeArn: warmup/1.0.0
    infrastructureConfigurationArn: builders
    imageTestsConfiguration: {imageTestsEnabled: false}
EOF

# buildah: the same scripts, one exec-form RUN each (bash, as ExecuteBash runs them).
mkdir -p "$WORK/containerfile"
{
    echo "FROM localhost/$PARENT_NAME"
    for script in "${STEP_SCRIPTS[@]}"; do
        printf '%s\n' "$script" | python3 -c 'import json,sys; print("RUN " + json.dumps(["bash", "-c", sys.stdin.read()]))'
    done
} >"$WORK/containerfile/Containerfile"
printf 'FROM localhost/%s\nRUN ["true"]\n' "$PARENT_NAME" >"$WORK/containerfile/Containerfile.warmup"
log "definitions: $WORK/project/pipeline.yaml; Containerfile: $WORK/containerfile/Containerfile"

# --- helpers ---
kiln_config() { # DATA_DIR -> writes DATA_DIR.yaml, prints its path
    printf 'dataDirectory: %s\n' "$1" >"$1.yaml"
    echo "$1.yaml"
}
# kiln_build CONFIG PIPELINE LOG: one kiln build; the image record (JSON) goes to LOG.json
kiln_build() {
    "$KILN" build -f "$WORK/project/pipeline.yaml" --pipeline "$2" --config "$1" >"$3.json" 2>"$3" \
        || { cat "$3" >&2; die "kiln build --pipeline $2 failed (log: $3)"; }
}
record_field() { # RECORD.json EXPR -> python expression over the record r
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
# buildah's default runtime here is crun, which refuses this host's hybrid cgroup v1/v2 layout;
# runc works, and it is what Kiln runs its builders with.
RUNC=$(command -v runc)
B=()   # buildah with the current run's storage
buildah_storage() { # DIR
    B=(buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay)
}
# buildah_build CONTAINERFILE TAG LOG
buildah_build() {
    "${B[@]}" bud --layers --pull=never --network host --add-host host.kiln.internal:127.0.0.1 --isolation oci --runtime "$RUNC" \
        -f "$1" -t "$2" "$WORK/containerfile" >"$3" 2>&1 \
        || { cat "$3" >&2; die "buildah bud -f $1 failed (log: $3)"; }
}

# The files the three steps write, as "sha256  path" lines, from each tool's image.
CHECKED=(etc/bench.conf etc/group etc/login.defs etc/motd etc/passwd home/app/data.bin opt/bench/files/f500.txt opt/bench/zeros.sha256 usr/share/bench-hello/version)
kiln_files() { # CONFIG LOCAL_NAME -> sums, read from the layers the build added to the parent
    local layout=$WORK/verify-kiln layer
    "$KILN" image copy "kiln:$2" "oci-layout:$layout:check" --config "$1" --quiet >/dev/null
    mkdir -p "$layout/top"
    # one layer (a snapshot of the whole build) or one per step: applied in order, later wins
    for layer in $(python3 - "$layout" "$PARENT_LAYERS" <<'PY'
import json, sys
layout, parent_layers = sys.argv[1], int(sys.argv[2])
index = json.load(open(layout + "/index.json"))
manifest = json.load(open(layout + "/blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
for layer in manifest["layers"][parent_layers:]:
    print(layout + "/blobs/sha256/" + layer["digest"].split(":")[1])
PY
); do
        tar -xzf "$layer" -C "$layout/top"
    done
    (cd "$layout/top" && sha256sum "${CHECKED[@]}")
    rm -rf "$layout"
}
buildah_files() { # IMAGE -> sums, read from a mounted working container
    local ctr mnt
    ctr=$("${B[@]}" from --pull=never "$1")
    mnt=$("${B[@]}" mount "$ctr")
    (cd "$mnt" && sha256sum "${CHECKED[@]}")
    "${B[@]}" umount "$ctr" >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
}

# Read the parent once so the first contender does not pay for the disk.
cat "$WORK/parent.tar" >/dev/null

KC=(); KW=(); KN=(); BC=(); BW=(); KBUILD=()
for run in $(seq 1 "$RUNS"); do
    # --- Kiln: a new data dir holding only the parent ---
    data=$WORK/kiln-data-run$run
    mkdir -p "$data"
    config=$(kiln_config "$data")
    "$KILN" image copy "$PARENT" "kiln:$PARENT_NAME" --config "$config" --quiet >/dev/null
    digest=$("$KILN" image inspect "kiln:$PARENT_NAME" --config "$config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
    [[ $digest == "$PARENT_DIGEST" ]] || die "kiln imported the parent as $digest, not $PARENT_DIGEST"
    kiln_build "$config" warmup "$WORK/logs/kiln-warmup-$run.log"

    t0=$(now)
    kiln_build "$config" bench "$WORK/logs/kiln-cold-$run.log"
    t1=$(now)
    cold=$(elapsed "$t0" "$t1")
    [[ $(record_field "$WORK/logs/kiln-cold-$run.log.json" 'r.get("cacheHit", False)') == False ]] \
        || die "kiln's cold build was a cache hit (run $run)"
    stage=$(record_field "$WORK/logs/kiln-cold-$run.log.json" '"%.2f" % sum(t["seconds"] for t in r["timings"] if t["stage"] == "BUILD")')

    t0=$(now)
    kiln_build "$config" bench "$WORK/logs/kiln-warm-$run.log"
    t1=$(now)
    warm=$(elapsed "$t0" "$t1")
    [[ $(record_field "$WORK/logs/kiln-warm-$run.log.json" 'r.get("cacheHit", False)') == True ]] \
        || die "kiln's warm build was not a cache hit (run $run)"
    grep -q 'BUILD: cache: kiln component install-package/1.0.0: reused (cached; package indexes unchanged' "$WORK/logs/kiln-warm-$run.log" \
        || { grep 'BUILD: cache' "$WORK/logs/kiln-warm-$run.log" >&2; die "kiln's warm build did not reuse the package step on unchanged indexes (run $run)"; }
    t0=$(now)
    kiln_build "$config" bench-nocheck "$WORK/logs/kiln-nocheck-$run.log"
    t1=$(now)
    nocheck=$(elapsed "$t0" "$t1")
    log "run $run kiln:    cold ${cold}s (BUILD stage ${stage}s)  warm ${warm}s  warm without the freshness check ${nocheck}s"
    KC+=("$cold"); KW+=("$warm"); KN+=("$nocheck"); KBUILD+=("$stage")
    if ((run == 1)); then
        local_name=$(record_field "$WORK/logs/kiln-cold-$run.log.json" 'r["localName"]')
        KILN_SUMS=$(kiln_files "$config" "$local_name")
        log "kiln's cold build, progress lines:"
        sed 's/^/    /' "$WORK/logs/kiln-cold-$run.log" >&2
        log "kiln's warm build, cache decisions:"
        grep 'BUILD: cache' "$WORK/logs/kiln-warm-$run.log" | sed 's/^/    /' >&2
    fi
    unmount_under "$data"
    rm -rf "$data" "$config"

    # --- buildah: new storage holding only the parent ---
    store=$WORK/buildah-run$run
    buildah_storage "$store"
    id=$("${B[@]}" pull --quiet "$PARENT")
    "${B[@]}" tag "$id" "localhost/$PARENT_NAME"
    digest=$("${B[@]}" inspect --type image --format '{{.FromImageDigest}}' "localhost/$PARENT_NAME")
    [[ $digest == "$PARENT_DIGEST" ]] || die "buildah imported the parent as $digest, not $PARENT_DIGEST"
    buildah_build "$WORK/containerfile/Containerfile.warmup" localhost/bench/warmup:1 "$WORK/logs/buildah-warmup-$run.log"

    t0=$(now)
    buildah_build "$WORK/containerfile/Containerfile" "localhost/$IMAGE_NAME" "$WORK/logs/buildah-cold-$run.log"
    t1=$(now)
    cold=$(elapsed "$t0" "$t1")
    t0=$(now)
    buildah_build "$WORK/containerfile/Containerfile" "localhost/$IMAGE_NAME" "$WORK/logs/buildah-warm-$run.log"
    t1=$(now)
    warm=$(elapsed "$t0" "$t1")
    hits=$(grep -c '^--> Using cache' "$WORK/logs/buildah-warm-$run.log" || true)
    ((hits == ${#STEP_SCRIPTS[@]})) || die "buildah's warm build used its cache for $hits of ${#STEP_SCRIPTS[@]} steps (run $run)"
    log "run $run buildah: cold ${cold}s  warm ${warm}s"
    BC+=("$cold"); BW+=("$warm")
    if ((run == 1)); then
        BUILDAH_SUMS=$(buildah_files "localhost/$IMAGE_NAME")
        if [[ $KILN_SUMS != "$BUILDAH_SUMS" ]]; then
            diff <(echo "$KILN_SUMS") <(echo "$BUILDAH_SUMS") >&2 || true
            die "the two images disagree on the files the steps wrote (< kiln, > buildah)"
        fi
        log "both images hold the same ${#CHECKED[@]} files the steps wrote"
    fi
    "${B[@]}" rm --all >/dev/null 2>&1 || true
    unmount_under "$store"
    rm -rf "$store"
done

KCM=$(median "${KC[@]}"); KWM=$(median "${KW[@]}"); KNM=$(median "${KN[@]}")
BCM=$(median "${BC[@]}"); BWM=$(median "${BW[@]}")
RC=$(ratio "$KCM" "$BCM"); RW=$(ratio "$KWM" "$BWM")

echo
echo "build-vs-buildah: 4 steps (500 files + sha256 of 256 MiB; 2 users + a 20 MiB file; config edits; apt-get install from a loopback repository) on $(mib "$parent_bytes") MiB Debian bookworm, $RUNS run(s)"
echo "machine: $(machine_line); load average at start $LOAD_AT_START, at end $(cut -d" " -f1-3 /proc/loadavg)"
echo "kiln:    $KILN"
echo "buildah: $(buildah --version)"
echo "parent:  $PARENT_DIGEST (both tools)"
printf '%-12s %-26s %10s\n' contender "runs (s)" "median (s)"
printf '%-12s %-26s %10s\n' "kiln cold" "${KC[*]}" "$KCM"
printf '%-12s %-26s %10s\n' "buildah cold" "${BC[*]}" "$BCM"
printf '%-12s %-26s %10s\n' "kiln warm" "${KW[*]}" "$KWM"
printf '%-12s %-26s %10s\n' "buildah warm" "${BW[*]}" "$BWM"
printf '%-12s %-26s %10s\n' "kiln warm, no check" "${KN[*]}" "$KNM"
echo "kiln cold, BUILD stage (builder + steps + snapshot): ${KBUILD[*]} s, median $(median "${KBUILD[@]}")"
echo "ratio kiln/buildah: cold $RC (target <= 0.8), warm with the freshness check $RW (target <= 1.0), warm without it $(ratio "$KNM" "$BWM")"
echo "RESULT build-vs-buildah kiln-cold=${KCM}s buildah-cold=${BCM}s ratio-cold=$RC kiln-warm=${KWM}s buildah-warm=${BWM}s ratio-warm=$RW kiln-warm-nocheck=${KNM}s ratio-warm-nocheck=$(ratio "$KNM" "$BWM")"

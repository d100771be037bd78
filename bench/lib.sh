# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared helpers for Kiln's benchmarks. Sourced by bench/*.sh; not run on its own.
# Needs bash with `set -euo pipefail` already on in the caller.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
CACHE=${KILN_BENCH_CACHE:-/var/tmp/kiln-bench}
RUNS=${RUNS:-3}
LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)   # other work on the machine skews the figures
ROOTFS=$CACHE/rootfs-bookworm-minbase
ROOTFS_DONE=$ROOTFS.complete   # outside the tree, so it is not packed

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

now() { date +%s.%N; }
# elapsed START END -> seconds with 2 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# median of the arguments (numbers)
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) printf "%.2f", v[(NR + 1) / 2]
        else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# ratio A B -> A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

check_runs() {
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
}

need() {
    local cmd pkg missing=()
    for cmd in "$@"; do
        pkg=${cmd#*:}; cmd=${cmd%%:*}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
            || die "could not install ${missing[*]}"
    fi
}

# The kiln binary: $KILN, else a release build made once (swift build -c release --product kiln).
resolve_kiln() {
    if [[ -n ${KILN:-} ]]; then
        [[ -x $KILN ]] || die "KILN=$KILN is not an executable file"
    else
        export PATH=/opt/swift/usr/bin:$PATH
        log "building kiln (release) in $REPO_DIR"
        (cd "$REPO_DIR" && swift build -c release --product kiln >&2) || die "swift build failed"
        KILN=$REPO_DIR/.build/release/kiln
    fi
    KILN=$(readlink -f "$KILN")
    log "kiln: $KILN"
}

# The apt mirror this machine uses (first deb.debian.org-style Debian URI), for mmdebstrap.
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^\s*#' \
        | grep -oE '(https?|file)://[^ ]+/debian/?( |$)' \
        | head -n1 | tr -d ' ' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# A minbase Debian bookworm root filesystem, bootstrapped once and kept in $CACHE.
ensure_rootfs() {
    if [[ -f $ROOTFS_DONE && -d $ROOTFS ]]; then
        log "rootfs: $ROOTFS (cached, $(du -sh "$ROOTFS" | cut -f1))"
        return
    fi
    need mmdebstrap:mmdebstrap
    mkdir -p "$CACHE"
    local mirror tmp
    mirror=$(debian_mirror)
    tmp=$CACHE/rootfs.tmp.$$
    rm -rf "$tmp" "$ROOTFS" "$ROOTFS_DONE"
    log "bootstrapping Debian bookworm (minbase) from $mirror into $ROOTFS (a few minutes, once)"
    mmdebstrap --quiet --mode=root --variant=minbase bookworm "$tmp" "$mirror" >&2 \
        || { rm -rf "$tmp"; die "mmdebstrap failed"; }
    mv "$tmp" "$ROOTFS"
    touch "$ROOTFS_DONE"
    log "rootfs: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

REGISTRY_PIDS=()
# start_registry DIR: starts a plain-http docker-registry on a free loopback port, its storage and
# config in DIR; sets REG_PORT and REG_PID (globals: call it directly, not in $(...)).
start_registry() {
    local dir=$1 port pid
    mkdir -p "$dir/data"
    port=$(free_port)
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
    /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    pid=$!
    REGISTRY_PIDS+=("$pid")
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
            REG_PORT=$port
            REG_PID=$pid
            return
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$dir/registry.log" >&2; die "docker-registry in $dir exited"; }
        sleep 0.1
    done
    cat "$dir/registry.log" >&2
    die "docker-registry on 127.0.0.1:$port did not answer"
}

# stop_registry PID: stops one registry started by start_registry.
stop_registry() {
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${REGISTRY_PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    REGISTRY_PIDS=("${keep[@]}")
}

stop_registries() {
    local pid
    ((${#REGISTRY_PIDS[@]})) || return 0
    for pid in "${REGISTRY_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${REGISTRY_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    REGISTRY_PIDS=()
}

machine_line() {
    local cpu mem
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
    echo "$(nproc) cores (${cpu:-unknown cpu}), $mem RAM, $(. /etc/os-release && echo "$PRETTY_NAME")"
}

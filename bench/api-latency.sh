#!/usr/bin/env bash
# Benchmark: `kiln server`'s Image Builder API with 10,000 images stored, driven by wrk.
#   Kiln:  `kiln server` (SQLite store, SigV4 check on every request) answering
#          GET /GetImage?imageBuildVersionArn=… (presigned in the query, botocore SigV4QueryAuth)
#          and POST /ListImages {"maxResults":25} (signed in the Authorization header, SigV4Auth).
#   Floor: `kiln server --bench-floor-response FILE`: the same Hummingbird server answering every
#          request with FILE, the bytes Kiln answered that request with; no store, no signature.
# Each endpoint is run twice per run: at the most wrk gets (closed loop, CONNECTIONS connections)
# and paced to RATE requests/s (Debian's wrk has no -R: a Lua delay() keeps each thread on a fixed
# schedule). Reports medians over RUNS runs of req/s and latency percentiles, the ratios
# Kiln/floor, the server's CPU time per request, and Kiln's idle RSS (VmRSS) after start-up, after
# a warm-up and after the load. No assertions on time; it fails when a request fails (any non-2xx
# answer or socket error) or an answer is wrong.
#
# Usage: bash bench/api-latency.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: swift build -c release --product kiln),
#        IMAGES (default 10000; 10 versions per name), DURATION (wrk -d, default 20s),
#        THREADS (wrk -t, default 2), CONNECTIONS (wrk -c, default 16), RATE (default 1000),
#        KEEP_WORK=1 keeps the work directory (store, server logs, wrk outputs, Lua scripts).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES=${IMAGES:-10000}
DURATION=${DURATION:-20s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
RATE=${RATE:-1000}
REGION=us-east-1
ACCOUNT=123456789012
ACCESS_KEY=AKIDKILNBENCH
export KILN_BENCH_SECRET=kiln-bench-secret-not-a-real-one

check_runs
[[ $IMAGES =~ ^[1-9][0-9]*0$ ]] || die "IMAGES must be a positive multiple of 10 (got '$IMAGES')"
for v in THREADS CONNECTIONS RATE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
need wrk:wrk curl:curl python3:python3
PYTHON=python3
if ! "$PYTHON" -c 'import botocore' 2>/dev/null; then
    need /usr/bin/python3:python3
    /usr/bin/python3 -c 'import botocore' 2>/dev/null \
        || { log "installing python3-botocore with apt-get"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-botocore >&2; }
    PYTHON=/usr/bin/python3
fi
resolve_kiln

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-api.XXXXXX")
DATA=$WORK/data
SERVER_PID=""
cleanup() {
    stop_server
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"          # so no ./kiln.yaml is picked up
unset KILN_CONFIG KILN_DATA_DIR KILN_LISTEN KILN_ACCOUNT_ID KILN_HOME_REGION KILN_ACCESS_KEY_ID KILN_SECRET_ACCESS_KEY

cat >"$WORK/kiln.yaml" <<EOF
dataDirectory: $DATA
accountId: "$ACCOUNT"
homeRegion: $REGION
credentials:
  - accessKeyId: $ACCESS_KEY
    secretAccessKeyEnv: KILN_BENCH_SECRET
EOF

# --- servers ---------------------------------------------------------------------------------

# start_server NAME [ARGS...]: kiln server on a new free loopback port; sets SERVER_PID and PORT
start_server() {
    local name=$1
    shift
    PORT=$(free_port)
    "$KILN" server --config "$WORK/kiln.yaml" --listen "127.0.0.1:$PORT" "$@" >"$WORK/server-$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then return; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server-$name.log" >&2; die "kiln server ($name) exited"; }
        sleep 0.1
    done
    tail -n 20 "$WORK/server-$name.log" >&2
    die "kiln server ($name) did not answer on 127.0.0.1:$PORT"
}

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- the store: the schema from a first start, then IMAGES rows -------------------------------

log "creating the store's schema: kiln server starts once on $DATA"
start_server schema
stop_server
[[ -f $DATA/kiln.sqlite ]] || die "kiln server left no $DATA/kiln.sqlite"

NAMES=$((IMAGES / 10))
log "inserting $IMAGES image records ($NAMES names x 10 versions, AVAILABLE, build 1)"
"$PYTHON" - "$DATA" "$NAMES" "$REGION" "$ACCOUNT" <<'PY'
import hashlib, json, sqlite3, sys
data, names, region, account = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
db = sqlite3.connect(data + "/kiln.sqlite")
rows, numbers = [], []
for n in range(names):
    name = f"bench-image-{n:04d}"
    for v in range(10):
        version = f"1.{v}.0"
        arn = f"arn:aws:imagebuilder:{region}:{account}:image/{name}/{version}/1"
        digest = "sha256:" + hashlib.sha256(arn.encode()).hexdigest()
        uri = f"127.0.0.1:5000/bench/{name}:{version}"
        created = f"2026-11-{1 + (n * 10 + v) % 28:02d}T12:{v:02d}:00.000Z"
        record = {
            "arn": arn, "name": name, "version": version, "build": 1, "type": "DOCKER", "status": "AVAILABLE",
            "sourcePipelineName": f"bench-pipeline-{n:04d}", "dateCreated": created,
            "parentImage": "kiln:bench/debian:bookworm", "localName": f"bench/{name}:{version}-1", "digest": digest,
            "cacheHit": False, "cachedSteps": 1, "builtSteps": 2,
            "distributionTargets": [{"region": region, "reference": uri}],
            "outputContainers": [{"region": region, "imageUris": [uri]}],
            "timings": [{"stage": "BUILD", "seconds": 3.5}, {"stage": "TEST", "seconds": 2.25},
                        {"stage": "DISTRIBUTE", "seconds": 1.0}],
            "logDirectory": f"{data}/images/{name}/{version}/1/logs",
        }
        rows.append((arn, name, version, 1, v, 0, 1, "AVAILABLE", record["sourcePipelineName"], created,
                     1796040000, json.dumps(record, separators=(",", ":")).encode()))
        numbers.append((name, version, 1))
with db:
    db.executemany("INSERT INTO image(arn, name, version, major, minor, patch, build, status, pipeline, dateCreated,"
                   " updatedAt, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO image_build_number(name, version, last) VALUES (?, ?, ?)", numbers)
count = db.execute("SELECT count(*) FROM image").fetchone()[0]
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
print(f"{count} image rows", file=sys.stderr)
PY
DB_BYTES=$(stat -c %s "$DATA/kiln.sqlite")
TARGET_ARN="arn:aws:imagebuilder:$REGION:$ACCOUNT:image/bench-image-$(printf %04d $((NAMES / 2)))/1.5.0/1"
LIST_BODY='{"maxResults":25}'

# --- wrk scripts ---------------------------------------------------------------------------------

# Prints one machine-readable line when wrk is done (latencies in microseconds).
cat >"$WORK/report.lua" <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "KILNBENCH requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
LUA
# Paces each wrk thread to RATE/THREADS requests/s on a fixed schedule (a connection that comes
# free takes the next slot), so a slow answer does not lower the offered rate while other
# connections are free. wrk times a request from when it is written, not from its slot.
cat >"$WORK/pace.lua" <<LUA
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } kiln_bench_timespec;
int clock_gettime(int clock, kiln_bench_timespec *tp);
]]
local clock = ffi.new("kiln_bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local interval = $THREADS * 1000 / $RATE
local next_slot = nil
function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 1000 then next_slot = now end -- never burst to catch up more than 1 s
  next_slot = next_slot + interval
  local wait = next_slot - now
  if wait < 0 then return 0 end
  return math.floor(wait)
end
LUA

# sign OP ARGUMENT: signs one request for the running server; writes $WORK/OP.lua and OP.json
sign() {
    "$PYTHON" "$BENCH_DIR/presign.py" --endpoint "http://127.0.0.1:$PORT" --region "$REGION" \
        --access-key "$ACCESS_KEY" --secret-key "$KILN_BENCH_SECRET" --lua "$WORK/$1.lua" "$1" "$2" >"$WORK/$1.json" \
        || die "presign.py $1 failed"
}

# send_once OP OUT: sends the signed request with curl; the body goes to OUT, prints the status
send_once() {
    "$PYTHON" - "$WORK/$1.json" "$2" <<'PY'
import json, subprocess, sys
request = json.load(open(sys.argv[1]))
argv = ["curl", "-sS", "-o", sys.argv[2], "-w", "%{http_code}", "-X", request["method"]]
for name, value in request["headers"].items():
    argv += ["-H", f"{name}: {value}"]
if request["body"]:
    argv += ["--data-binary", request["body"]]
argv.append(request["url"])
sys.stdout.write(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
PY
}

# run_wrk LABEL OP MODE(max|paced): one wrk run of OP's signed request; sets W (assoc array)
declare -A W
run_wrk() {
    local label=$1 op=$2 mode=$3 line kv t0 t1
    local script=$WORK/wrk-${label//[^A-Za-z0-9]/-}.lua out=$WORK/wrk-${label//[^A-Za-z0-9]/-}.txt
    if [[ $mode == paced ]]; then cat "$WORK/$op.lua" "$WORK/pace.lua" "$WORK/report.lua" >"$script"
    else cat "$WORK/$op.lua" "$WORK/report.lua" >"$script"; fi
    t0=$(cpu_ticks)
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "http://127.0.0.1:$PORT/" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed ($label)"; }
    t1=$(cpu_ticks)
    line=$(grep '^KILNBENCH ' "$out") || { cat "$out" >&2; die "wrk printed no summary ($label)"; }
    W=()
    for kv in ${line#KILNBENCH }; do W[${kv%%=*}]=${kv#*=}; done
    W[rps]=$(awk -v n="${W[requests]}" -v d="${W[duration_us]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
    W[cpu_us]=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="${W[requests]}" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    if ((W[status_errors] > 0 || W[socket_errors] > 0)); then
        cat "$out" >&2
        tail -n 20 "$WORK"/server-*.log >&2
        die "$label: ${W[status_errors]} non-2xx answers and ${W[socket_errors]} socket errors of ${W[requests]} requests"
    fi
    log "$(printf '%-22s %7s req/s  p50 %6s ms  p90 %6s ms  p99 %6s ms  max %7s ms  server CPU %5s us/request' \
        "$label" "${W[rps]}" "$(us_ms "${W[p50_us]}")" "$(us_ms "${W[p90_us]}")" "$(us_ms "${W[p99_us]}")" \
        "$(us_ms "${W[max_us]}")" "${W[cpu_us]}")"
}
us_ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }

# Figures over runs: F[key] is a space-separated list of values, one per run
declare -A F
keep() { # PREFIX: appends W's figures under PREFIX
    local k
    for k in rps p50_us p90_us p99_us max_us cpu_us; do F[$1.$k]="${F[$1.$k]:-} ${W[$k]}"; done
}
med() { median ${F[$1]}; }   # word splitting on purpose

# --- the real answers, checked, kept for the floor -------------------------------------------

start_server check
sign get-image "$TARGET_ARN"
sign list-images "$LIST_BODY"
for op in get-image list-images; do
    status=$(send_once "$op" "$WORK/$op.response")
    [[ $status == 200 ]] || { cat "$WORK/$op.response" >&2; echo >&2; die "$op: kiln server answered $status, not 200"; }
done
"$PYTHON" - "$WORK" "$TARGET_ARN" <<'PY' || die "kiln server's answers are not what was stored"
import json, sys
work, arn = sys.argv[1], sys.argv[2]
image = json.load(open(f"{work}/get-image.response"))["image"]
assert image["arn"] == arn and image["state"]["status"] == "AVAILABLE", image
listed = json.load(open(f"{work}/list-images.response"))
assert len(listed["imageVersionList"]) == 25 and listed.get("nextToken"), listed
PY
GET_BYTES=$(stat -c %s "$WORK/get-image.response")
LIST_BYTES=$(stat -c %s "$WORK/list-images.response")
log "curl: GetImage 200 ($GET_BYTES bytes), ListImages 200 ($LIST_BYTES bytes, 25 versions and a nextToken)"
stop_server

# --- runs ----------------------------------------------------------------------------------------

IDLE_CPU=(); RSS_START=(); RSS_WARM=(); RSS_AFTER=(); RSS_PEAK=(); FLOOR_RSS=()
for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: kiln server"
    start_server "kiln-run$run"
    sleep 1
    idle0=$(cpu_ticks)
    sleep 5
    IDLE_CPU+=("$(awk -v t=$(($(cpu_ticks) - idle0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz / 5 * 100 }')")
    RSS_START+=("$(rss_kib)")
    sign get-image "$TARGET_ARN"
    sign list-images "$LIST_BODY"
    # warm-up: a few seconds of each endpoint, then idle again
    DURATION=3s run_wrk "warm-up GetImage" get-image max
    DURATION=3s run_wrk "warm-up ListImages" list-images max
    sleep 3
    RSS_WARM+=("$(rss_kib)")
    sign get-image "$TARGET_ARN"
    sign list-images "$LIST_BODY"
    run_wrk "kiln GetImage max" get-image max;            keep kiln.get.max
    run_wrk "kiln GetImage ${RATE}/s" get-image paced;    keep kiln.get.paced
    sign list-images "$LIST_BODY"   # header signatures age: sign again before each run
    run_wrk "kiln ListImages max" list-images max;        keep kiln.list.max
    sign list-images "$LIST_BODY"
    run_wrk "kiln ListImages ${RATE}/s" list-images paced; keep kiln.list.paced
    sleep 3
    RSS_AFTER+=("$(rss_kib)"); RSS_PEAK+=("$(hwm_kib)")
    stop_server

    for op in get-image list-images; do
        name=$([[ $op == get-image ]] && echo GetImage || echo ListImages)
        key=$([[ $op == get-image ]] && echo get || echo list)
        log "run $run/$RUNS: floor server answering $name's bytes"
        start_server "floor-$key-run$run" --bench-floor-response "$WORK/$op.response"
        sleep 3
        [[ $op == list-images ]] || FLOOR_RSS+=("$(rss_kib)")
        sign "$op" "$([[ $op == get-image ]] && echo "$TARGET_ARN" || echo "$LIST_BODY")"
        cmp -s <(curl -sS "http://127.0.0.1:$PORT/$name") "$WORK/$op.response" || die "the floor server does not answer $op's bytes"
        DURATION=3s run_wrk "warm-up floor $name" "$op" max
        run_wrk "floor $name max" "$op" max;            keep "floor.$key.max"
        run_wrk "floor $name ${RATE}/s" "$op" paced;    keep "floor.$key.paced"
        stop_server
    done
done

# --- summary -----------------------------------------------------------------------------------

mib_med() { local v=() k; for k in "$@"; do v+=("$(kib_mib "$k")"); done; median "${v[@]}"; }
RSS_S=$(mib_med "${RSS_START[@]}"); RSS_W=$(mib_med "${RSS_WARM[@]}"); RSS_A=$(mib_med "${RSS_AFTER[@]}")
RSS_P=$(mib_med "${RSS_PEAK[@]}"); RSS_F=$(mib_med "${FLOOR_RSS[@]}")

echo
echo "api-latency: kiln server, $IMAGES images ($(mib "$DB_BYTES") MiB kiln.sqlite), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $RUNS run(s), medians"
echo "GetImage: GET /GetImage?imageBuildVersionArn=$TARGET_ARN (presigned), $GET_BYTES-byte answer"
echo "ListImages: POST /ListImages $LIST_BODY (Authorization header), $LIST_BYTES-byte answer"
echo "machine: $(machine_line); load average at start $LOAD_AT_START, at end $(cut -d" " -f1-3 /proc/loadavg)"
echo "kiln:    $KILN"
printf '%-10s %-8s %10s %11s %6s %8s %9s %9s %6s %9s %9s\n' \
    endpoint load "kiln req/s" "floor req/s" ratio "kiln p50" "kiln p99" "floor p99" ratio "kiln CPU" "floor CPU"
RESULT="RESULT api-latency"
for key in get list; do
    for mode in max paced; do
        name=$([[ $key == get ]] && echo GetImage || echo ListImages)
        load=$([[ $mode == max ]] && echo max || echo "${RATE}/s")
        kr=$(med "kiln.$key.$mode.rps"); fr=$(med "floor.$key.$mode.rps")
        kp=$(us_ms "$(med "kiln.$key.$mode.p99_us")"); fp=$(us_ms "$(med "floor.$key.$mode.p99_us")")
        k50=$(us_ms "$(med "kiln.$key.$mode.p50_us")")
        kc=$(med "kiln.$key.$mode.cpu_us"); fc=$(med "floor.$key.$mode.cpu_us")
        printf '%-10s %-8s %10.0f %11.0f %6s %8s %9s %9s %6s %6.0f us %6.0f us\n' \
            "$name" "$load" "$kr" "$fr" "$(ratio "$kr" "$fr")" "$k50" "$kp" "$fp" "$(ratio "$kp" "$fp")" "$kc" "$fc"
        RESULT+=" $key-$mode-rps=$(printf %.0f "$kr") floor-$key-$mode-rps=$(printf %.0f "$fr") $key-$mode-p99=${kp}ms floor-$key-$mode-p99=${fp}ms"
    done
done
echo "req/s ratio = kiln/floor (below 1: Kiln serves fewer); p99 ratio = kiln/floor (above 1: Kiln is slower);"
echo "CPU = the server's user+system time per request during the run (/proc/PID/stat)"
echo "per run (p99 ms):"
for key in get list; do
    for mode in max paced; do
        for who in kiln floor; do
            printf '  %-5s %-4s %-5s p99 %s   req/s %s\n' "$who" "$key" "$mode" \
                "$(for u in ${F[$who.$key.$mode.p99_us]}; do printf '%s ' "$(us_ms "$u")"; done)" "${F[$who.$key.$mode.rps]}"
        done
    done
done
echo "kiln idle RSS (VmRSS, MiB): after start-up $RSS_S (${RSS_START[*]} KiB), after warm-up $RSS_W, after the load $RSS_A; peak (VmHWM) $RSS_P; floor server after start-up $RSS_F"
echo "kiln idle CPU (5 s after start-up, % of one core): ${IDLE_CPU[*]}"
echo "$RESULT rss-start=${RSS_S}MiB rss-warm=${RSS_W}MiB rss-after=${RSS_A}MiB rss-peak=${RSS_P}MiB"

#!/usr/bin/env bash
# Benchmark: what `kiln server`'s scheduler costs while nothing is due.
#   Kiln:  `kiln server` holding PIPELINES enabled pipelines, each with its own cron schedule
#          (a mix of daily, weekday, `#`, `L`, `W`, step and time-zone expressions whose fires
#          are all in 2030 or later, so none fires during the measurement), created through the
#          API with boto3.
#   Peer:  the same server on the same machine with no pipelines (its HTTP server, build queue,
#          webhook sender and scheduler idling), measured the same way.
# Reports the server's CPU time (utime+stime from /proc) over IDLE seconds as a share of one core,
# for both, their ratio, and how long the first read of every pipeline took at start-up (the
# scheduler's log line). Target: under 1% of one core with 10,000 pipelines. No assertions on time.
#
# Usage: bash bench/scheduler-idle.sh
# Env:   KILN (kiln binary; default: swift build -c release --product kiln), PIPELINES (10000),
#        IDLE (seconds measured, default 60), KEEP_WORK=1 keeps the work directory.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIPELINES=${PIPELINES:-10000}
IDLE=${IDLE:-60}
ACCESS_KEY=AKIDKILNBENCH
export KILN_BENCH_SECRET=kiln-bench-secret-not-a-real-one
[[ $PIPELINES =~ ^[1-9][0-9]*$ ]] || die "PIPELINES must be a positive integer (got '$PIPELINES')"
[[ $IDLE =~ ^[1-9][0-9]*$ ]] || die "IDLE must be a positive integer (got '$IDLE')"
need curl:curl python3:python3
python3 -c 'import boto3' 2>/dev/null || pip install -q boto3 >&2 || die "boto3 is needed (pip install boto3)"
resolve_kiln

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-scheduler.XXXXXX")
SERVER_PID=""
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    stop_server
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"
unset KILN_CONFIG KILN_DATA_DIR KILN_LISTEN KILN_ACCOUNT_ID KILN_HOME_REGION KILN_ACCESS_KEY_ID KILN_SECRET_ACCESS_KEY

# start_server NAME DATA: a server on a free port over data directory DATA; sets SERVER_PID, PORT
start_server() {
    local name=$1 data=$2
    PORT=$(free_port)
    printf 'dataDirectory: %s\ncredentials:\n  - {accessKeyId: %s, secretAccessKeyEnv: KILN_BENCH_SECRET}\n' \
        "$data" "$ACCESS_KEY" >"$WORK/kiln-$name.yaml"
    "$KILN" server --config "$WORK/kiln-$name.yaml" --listen "127.0.0.1:$PORT" >>"$WORK/server-$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then return; fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "kiln server ($name) exited: $(tail -5 "$WORK/server-$name.log")"
        sleep 0.1
    done
    die "kiln server ($name) did not answer /healthz"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
TICKS=$(getconf CLK_TCK)

# measure: the share of one core (percent) the server used over IDLE seconds
measure() {
    local before after
    before=$(cpu_ticks)
    sleep "$IDLE"
    after=$(cpu_ticks)
    awk -v a="$before" -v b="$after" -v t="$TICKS" -v s="$IDLE" 'BEGIN { printf "%.3f", (b - a) / t / s * 100 }'
}

# --- the peer: no pipelines ----------------------------------------------------------------
start_server empty "$WORK/empty"
sleep 5
log "measuring the server with no pipelines for $IDLE s"
EMPTY=$(measure)
stop_server

# --- Kiln: PIPELINES scheduled pipelines -----------------------------------------------------
start_server loaded "$WORK/loaded"
log "creating $PIPELINES pipelines through the API"
CREATED_AT=$(now)
python3 "$BENCH_DIR/make_pipelines.py" "$PORT" "$PIPELINES" "$ACCESS_KEY" "$KILN_BENCH_SECRET"
log "created in $(elapsed "$CREATED_AT" "$(now)") s; restarting the server, which reads them all once at start"
stop_server
: >"$WORK/server-loaded.log"
start_server loaded "$WORK/loaded"
for _ in $(seq 1 600); do
    grep -q "scheduled pipeline(s)" "$WORK/server-loaded.log" && break
    sleep 0.1
done
READ_LINE=$(grep -m1 "scheduled pipeline(s)" "$WORK/server-loaded.log" || echo "(no scheduler line)")
sleep 5
log "measuring the server with $PIPELINES pipelines for $IDLE s"
LOADED=$(measure)
STARTS=$(grep -c "started arn" "$WORK/server-loaded.log" || true)
stop_server

echo
echo "scheduler idle CPU, $IDLE s each (load at start: $LOAD_AT_START)"
echo "  kiln server, no pipelines:         $EMPTY % of one core"
echo "  kiln server, $PIPELINES pipelines:  $LOADED % of one core"
echo "  ratio (loaded / empty):            $(ratio "$LOADED" "$EMPTY")"
echo "  start-up: ${READ_LINE#*\] }"
echo "  builds started while measuring:    $STARTS (expected 0)"

#!/usr/bin/env bash
# Benchmark: next fires of 100,000 pipeline schedules.
#   Kiln:  `kiln pipeline next --expressions-file FILE --from FROM` (release build): parses every
#          expression, then computes each one's next fire; it reports both times on stderr and
#          the time counted here is the computing alone.
#   Peer:  Python's croniter on the expressions it can read (AWS syntax translated: day-of-week
#          1–7 → 0–6, '?' → '*', nL → L(n-1), L alone → 6, a year field → croniter's 7-field form
#          with seconds 0; LW and years after 2099 have no croniter form), from the same start in
#          the same zones.
# The expressions are a fixed mix (seed SEED): daily, weekdays, weekly, n#k, L, LW, nL, nW,
# monthly, month lists, minute/hour/month steps, year lists/ranges/steps (some finished), 29 Feb,
# and ~1% that AWS refuses; a third in UTC, the rest in 8 other zones. Reports the median of
# RUNS runs of Kiln's computing time, croniter's time, their ratio on the same subset, and how
# many next fires agree, with the first few disagreements grouped by kind. No assertions on time;
# it fails only when a command fails.
#
# Usage: bash bench/cron.sh
# Env:   RUNS (default 3), KILN (kiln binary; default: flock /tmp/kiln-build.lock swift build -c
#        release --product kiln), COUNT (default 100000), SEED (default 42),
#        FROM (default 2026-06-15T09:41:00Z), KEEP_WORK=1 keeps the work directory.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-100000}
SEED=${SEED:-42}
FROM=${FROM:-2026-06-15T09:41:00Z}
check_runs
[[ $COUNT =~ ^[1-9][0-9]*$ ]] || die "COUNT must be a positive integer (got '$COUNT')"
[[ $SEED =~ ^[0-9]+$ ]] || die "SEED must be a whole number (got '$SEED')"
need python3:python3
if ! python3 -c 'import croniter' 2>/dev/null; then
    log "installing croniter with pip"
    python3 -m pip install --quiet croniter >&2 || die "pip install croniter failed"
fi
if [[ -z ${KILN:-} ]]; then
    export PATH=/opt/swift/usr/bin:$PATH
    log "building kiln (release) in $REPO_DIR, waiting for /tmp/kiln-build.lock"
    (cd "$REPO_DIR" && flock /tmp/kiln-build.lock swift build -c release --product kiln >&2) || die "swift build failed"
    KILN=$REPO_DIR/.build/release/kiln
fi
resolve_kiln

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-cron.XXXXXX")
cleanup() {
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"

python3 "$BENCH_DIR/cron_peer.py" generate "$COUNT" "$SEED" >exprs.tsv
log "$(wc -l <exprs.tsv) expressions, next fire after $FROM"

# run_kiln FILE OUT -> prints "COMPUTE_SECONDS PARSE_SECONDS"
run_kiln() {
    "$KILN" pipeline next --expressions-file "$1" --from "$FROM" >"$2" 2>kiln.err || { cat kiln.err >&2; die "kiln pipeline next failed"; }
    sed -nE 's/.* in ([0-9.]+) s; computed [0-9]+ next fires in ([0-9.]+) s$/\2 \1/p' kiln.err
}

all_compute=() all_parse=() subset_compute=()
for run in $(seq 1 "$RUNS"); do
    read -r compute parse < <(run_kiln exprs.tsv kiln.out)
    [[ -n ${compute:-} ]] || die "no timing line from kiln: $(cat kiln.err)"
    all_compute+=("$compute") all_parse+=("$parse")
    log "run $run: kiln computed $COUNT next fires in $compute s (parsing took $parse s)"
done
fired=$(grep -cvE '^(error:|none$)' kiln.out || true)
refused=$(grep -c '^error:' kiln.out || true)
finished=$(grep -c '^none$' kiln.out || true)

log "croniter on the expressions it can read (one run; slow)"
python3 "$BENCH_DIR/cron_peer.py" compare exprs.tsv kiln.out "$FROM" subset.tsv >peer.txt
read -r compared equal peer_parse peer_next < <(sed -nE 's/^PEER compared=([0-9]+) equal=([0-9]+) parse_s=([0-9.]+) next_s=([0-9.]+)$/\1 \2 \3 \4/p' peer.txt)
for run in $(seq 1 "$RUNS"); do
    read -r compute _ < <(run_kiln subset.tsv subset.out)
    subset_compute+=("$compute")
done

# median4 NUMBERS... -> the median with 4 decimals (lib.sh's median keeps 2, too few here)
median4() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.4f", v[(NR + 1) / 2]; else printf "%.4f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
kiln_all=$(median4 "${all_compute[@]}")
kiln_parse=$(median4 "${all_parse[@]}")
kiln_subset=$(median4 "${subset_compute[@]}")
peer_total=$(awk -v a="$peer_parse" -v b="$peer_next" 'BEGIN { printf "%.2f", a + b }')

echo
echo "Machine: $(machine_line); load at start $LOAD_AT_START"
echo "kiln: $KILN; $COUNT expressions (seed $SEED), next fire after $FROM"
echo "kiln answers: $fired fire, $finished have no fire left, $refused refused (AWS refuses them too)"
echo
printf '%-44s %s\n' "kiln, $COUNT next fires (computing, median)" "$kiln_all s (runs: ${all_compute[*]})"
printf '%-44s %s\n' "kiln, parsing the $COUNT (median)" "$kiln_parse s"
printf '%-44s %s\n' "kiln, the $compared croniter also reads" "$kiln_subset s (runs: ${subset_compute[*]})"
printf '%-44s %s\n' "croniter, the same $compared: get_next" "$peer_next s (croniter() construction $peer_parse s)"
ratio=$(awk -v a="$kiln_subset" -v b="$peer_next" 'BEGIN { printf "%.5f", a / b }')
printf '%-44s %s\n' "ratio kiln/croniter (computing)" "$ratio"
echo
grep -v '^PEER ' peer.txt
echo
echo "RESULT cron count=$COUNT kiln=${kiln_all}s kiln-parse=${kiln_parse}s kiln-subset=${kiln_subset}s croniter=${peer_next}s croniter-with-parse=${peer_total}s ratio=$ratio agree=$equal/$compared"

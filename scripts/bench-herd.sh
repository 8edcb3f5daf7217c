#!/usr/bin/env bash
# Benchmark of the 9 am herd (not a test): many clients pull the same new template at
# once. Two vmreg replicas share one Garage bucket and one Redis; a blob of BENCH_MIB MiB
# is pushed once through /v2/, then per run:
#   single   one curl GET of the blob through replica A
#   herd     CLIENTS curl GETs of it at once, alternating between the two replicas
# and prints the aggregate MB/s of the herd against the single pull (both measured in the
# same run, medians over RUNS), the bytes each replica read from S3 during the herd
# (`vmreg_s3_bytes_read_total`) against the blob's size, and each replica's peak resident
# memory (VmHWM). Pulled bytes go to /dev/null (the size of every pull is checked, and the
# content of one pull per run through each replica against the blob's digest), so the
# disk holds the blob once, in Garage, plus the source while pushing.
#
# Then, per replica, for the single pull and for the herd: the server's CPU seconds, the
# bytes it sent (`vmreg_transferred_bytes_total{direction="pull"}`) and the bytes it read
# from S3: the registry's own load. With REDIRECT=1 both replicas run with --s3-redirect
# and curl follows the 307 (-L): the bytes go from S3 to the clients, and the replicas'
# load should stay flat however many clients pull (a few 307s, no bytes sent or read).
#
#   scripts/bench-herd.sh [RUNS]          (default 3)
#   REDIRECT=1 scripts/bench-herd.sh [RUNS]
#
# Environment: BENCH_MIB (default 2048), CLIENTS (default 20), VMREG_BIN (default
# target/release/vmreg, built if missing), SERVE_ARGS (extra `vmreg serve` flags for both
# replicas, e.g. "--s3-read-cache-mib 0" to see the herd without shared reads), REDIRECT
# (1: --s3-redirect, curl -L), BENCH_DIR.
set -euo pipefail

MIB=${BENCH_MIB:-2048}
CLIENTS=${CLIENTS:-20}
REDIRECT=${REDIRECT:-0}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-herd curl python3 sha256sum

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
REPLICAS=()
cleanup() {
    for pid in "${REPLICAS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    vmreg_services_stop
}
VMREG_SERVICES_QUIET=1 vmreg_services_start

BYTES=$((MIB << 20))
REPO=bench/herd
REDIRECT_ARGS=()
CURL_FOLLOW=()
if [[ $REDIRECT == 1 ]]; then
    REDIRECT_ARGS=(--s3-redirect)
    CURL_FOLLOW=(-L)
fi
# Both replicas on the same prefixes: any replica serves what the other stored.
URLS=()
for name in a b; do
    # shellcheck disable=SC2086
    bench_start_server -- --data-dir "$WORK/data-$name" \
        --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix herd: \
        --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
        --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix herd "${REDIRECT_ARGS[@]}" ${SERVE_ARGS:-}
    REPLICAS+=("$SERVER_PID")
    URLS+=("$URL")
    mv "$WORK/server.log" "$WORK/server-$name.log"
done

echo "bench-herd: writing and pushing a $MIB MiB blob" >&2
head -c "$BYTES" /dev/urandom >"$WORK/blob"
DIGEST=sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)
location=$(curl -sSf -X POST -D - -o /dev/null "${URLS[0]}/v2/$REPO/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
[[ $location == /* ]] && location=${URLS[0]}$location
sep='?'
[[ $location == *\?* ]] && sep='&'
curl -sSf -T "$WORK/blob" -H 'Content-Type: application/octet-stream' -o /dev/null \
    "$location${sep}digest=$DIGEST"
rm -f "$WORK/blob"

# The load of replica $1 so far: "CPU-seconds bytes-sent bytes-read-from-S3".
load() {
    local sent_read
    sent_read=$(curl -sSf "${URLS[$1]}/metrics" | awk '
        $1 == "vmreg_transferred_bytes_total{direction=\"pull\"}" {sent = $2}
        $1 == "vmreg_s3_bytes_read_total" {read = $2}
        END {printf "%.0f %.0f", sent, read}')
    echo "$(cpu_secs "${REPLICAS[$1]}") $sent_read"
}
# The load of each replica between the readings A0 B0 (from `load 0` and `load 1`) and
# A1 B1: per replica "CPU-seconds MiB-sent MiB-read" (a row of the load table).
load_between() {
    awk -v a0="$1" -v b0="$2" -v a="$3" -v b="$4" 'BEGIN {
        split(a0, x); split(a, y); printf "%.2f %.0f %.0f ", y[1] - x[1], (y[2] - x[2]) / 1048576, (y[3] - x[3]) / 1048576
        split(b0, x); split(b, y); printf "%.2f %.0f %.0f", y[1] - x[1], (y[2] - x[2]) / 1048576, (y[3] - x[3]) / 1048576
    }'
}
peak_rss_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# One pull through $1 to /dev/null; fails unless every byte arrived.
pull() {
    local n
    n=$(curl -sSf "${CURL_FOLLOW[@]}" -o /dev/null -w '%{size_download}' "$1/v2/$REPO/blobs/$DIGEST")
    [[ $n == "$BYTES" ]] || { echo "bench-herd: a pull got $n bytes, not $BYTES" >&2; return 1; }
}
# The content through $1 matches the pushed digest.
check() {
    local got
    got=sha256:$(curl -sSf "${CURL_FOLLOW[@]}" "$1/v2/$REPO/blobs/$DIGEST" | sha256sum | cut -d' ' -f1)
    [[ $got == "$DIGEST" ]] || { echo "bench-herd: pulled bytes through $1 differ" >&2; exit 1; }
}

echo "bench-herd: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(basename "$BIN")" \
    "from $(dirname "$BIN" | xargs basename), ${SERVE_ARGS:-default read settings}," \
    "$([[ $REDIRECT == 1 ]] && echo "--s3-redirect (curl -L)" || echo "no redirect")" >&2
check "${URLS[0]}"
check "${URLS[1]}"
declare -a ONE HERD READ_A READ_B LOAD_ONE LOAD_HERD
printf '%-6s %12s %12s %16s %16s\n' run "single MB/s" "herd MB/s" "S3 read A (x)" "S3 read B (x)"
for run in $(seq "$RUNS"); do
    la=$(load 0) lb=$(load 1)
    t0=$(now)
    pull "${URLS[0]}"
    t1=$(now)
    ONE[run]=$(mbps "$BYTES" "$t0" "$t1")
    LOAD_ONE[run]=$(load_between "$la" "$lb" "$(load 0)" "$(load 1)")

    la=$(load 0) lb=$(load 1)
    pids=()
    t0=$(now)
    for i in $(seq "$CLIENTS"); do
        pull "${URLS[i % 2]}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid"
    done
    t1=$(now)
    HERD[run]=$(mbps $((BYTES * CLIENTS)) "$t0" "$t1")
    na=$(load 0) nb=$(load 1)
    LOAD_HERD[run]=$(load_between "$la" "$lb" "$na" "$nb")
    # A reading's last field is the bytes read from S3 so far.
    read_a=$((${na##* } - ${la##* })) read_b=$((${nb##* } - ${lb##* }))
    READ_A[run]=$(ratio "$read_a" "$BYTES")
    READ_B[run]=$(ratio "$read_b" "$BYTES")
    printf '%-6s %12s %12s %16s %16s\n' "$run" "${ONE[run]}" "${HERD[run]}" \
        "$read_a (${READ_A[run]})" "$read_b (${READ_B[run]})"
done
one=$(median "${ONE[@]}") herd=$(median "${HERD[@]}")
printf '%-6s %12s %12s %16s %16s\n' median "$one" "$herd" "(x$(median "${READ_A[@]}"))" \
    "(x$(median "${READ_B[@]}"))"
echo "herd/single aggregate throughput (medians): $(ratio "$herd" "$one");" \
    "S3 bytes read per replica per herd: x$(median "${READ_A[@]}") and x$(median "${READ_B[@]}") the blob;" \
    "peak RSS: A $(peak_rss_mib "${REPLICAS[0]}") MiB, B $(peak_rss_mib "${REPLICAS[1]}") MiB"
echo "($CLIENTS clients, $MIB MiB blob, 2 replicas on Garage + Redis on this machine, $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg))"

# The load table: per run and phase, each replica's CPU seconds, MiB sent, MiB read from S3.
echo
row() { printf '%-6s %-6s %9s %9s %9s %9s %9s %9s\n' "$@"; }
row run pull "A CPU s" "A MiB out" "A MiB S3" "B CPU s" "B MiB out" "B MiB S3"
for run in $(seq "$RUNS"); do
    # shellcheck disable=SC2086 # six numbers, split on purpose
    row "$run" single ${LOAD_ONE[run]}
    # shellcheck disable=SC2086
    row "$run" herd ${LOAD_HERD[run]}
done
# The medians over the runs of each of the six columns of the load rows "$@".
load_medians() {
    local col values out=()
    for col in 1 2 3 4 5 6; do
        mapfile -t values < <(printf '%s\n' "$@" | awk -v c="$col" '{print $c}')
        out+=("$(median "${values[@]}")")
    done
    echo "${out[*]}"
}
one_load=$(load_medians "${LOAD_ONE[@]}") herd_load=$(load_medians "${LOAD_HERD[@]}")
# shellcheck disable=SC2086
row median single $one_load
# shellcheck disable=SC2086
row median herd $herd_load
read -r ha_cpu ha_out ha_s3 hb_cpu hb_out hb_s3 <<<"$herd_load"
read -r oa_cpu oa_out _ <<<"$one_load"
echo "registry load per herd of $CLIENTS (medians): A $ha_cpu CPU s, $ha_out MiB sent, $ha_s3 MiB read from S3;" \
    "B $hb_cpu CPU s, $hb_out MiB sent, $hb_s3 MiB read from S3; one pull through A: $oa_cpu CPU s, $oa_out MiB sent;" \
    "$([[ $REDIRECT == 1 ]] && echo "with --s3-redirect the herd's $((MIB * CLIENTS)) MiB came from S3 directly" ||
        echo "the herd's $((MIB * CLIENTS)) MiB went through the replicas")"

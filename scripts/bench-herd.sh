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
#   scripts/bench-herd.sh [RUNS]          (default 3)
#
# Environment: BENCH_MIB (default 2048), CLIENTS (default 20), VMREG_BIN (default
# target/release/vmreg, built if missing), SERVE_ARGS (extra `vmreg serve` flags for both
# replicas, e.g. "--s3-read-cache-mib 0" to see the herd without shared reads), BENCH_DIR.
set -euo pipefail

RUNS=${1:-3}
MIB=${BENCH_MIB:-2048}
CLIENTS=${CLIENTS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
bench_prepare bench-herd curl python3 sha256sum
WORK=${BENCH_DIR:-$(mktemp -d /tmp/vmreg-bench-herd.XXXXXX)}
mkdir -p "$WORK"

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
SERVER_PID=
REPLICAS=()
cleanup() {
    for pid in "${REPLICAS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    vmreg_services_stop
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
VMREG_SERVICES_QUIET=1 vmreg_services_start

BYTES=$((MIB << 20))
REPO=bench/herd
# Both replicas on the same prefixes: any replica serves what the other stored.
URLS=()
for name in a b; do
    # shellcheck disable=SC2086
    bench_start_server -- --data-dir "$WORK/data-$name" \
        --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix herd: \
        --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
        --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix herd ${SERVE_ARGS:-}
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

s3_read() {
    curl -sSf "$1/metrics" | awk '$1 == "vmreg_s3_bytes_read_total" {print $2}'
}
peak_rss_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# One pull through $1 to /dev/null; fails unless every byte arrived.
pull() {
    local n
    n=$(curl -sSf -o /dev/null -w '%{size_download}' "$1/v2/$REPO/blobs/$DIGEST")
    [[ $n == "$BYTES" ]] || { echo "bench-herd: a pull got $n bytes, not $BYTES" >&2; return 1; }
}
# The content through $1 matches the pushed digest.
check() {
    local got
    got=sha256:$(curl -sSf "$1/v2/$REPO/blobs/$DIGEST" | sha256sum | cut -d' ' -f1)
    [[ $got == "$DIGEST" ]] || { echo "bench-herd: pulled bytes through $1 differ" >&2; exit 1; }
}

echo "bench-herd: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(basename "$BIN")" \
    "from $(dirname "$BIN" | xargs basename), ${SERVE_ARGS:-default read settings}" >&2
check "${URLS[0]}"
check "${URLS[1]}"
declare -a ONE HERD READ_A READ_B
printf '%-6s %12s %12s %16s %16s\n' run "single MB/s" "herd MB/s" "S3 read A (x)" "S3 read B (x)"
for run in $(seq "$RUNS"); do
    t0=$(now)
    pull "${URLS[0]}"
    t1=$(now)
    ONE[run]=$(mbps "$BYTES" "$t0" "$t1")

    a0=$(s3_read "${URLS[0]}") b0=$(s3_read "${URLS[1]}")
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
    a1=$(s3_read "${URLS[0]}") b1=$(s3_read "${URLS[1]}")
    READ_A[run]=$(ratio $((a1 - a0)) "$BYTES")
    READ_B[run]=$(ratio $((b1 - b0)) "$BYTES")
    printf '%-6s %12s %12s %16s %16s\n' "$run" "${ONE[run]}" "${HERD[run]}" \
        "$((a1 - a0)) (${READ_A[run]})" "$((b1 - b0)) (${READ_B[run]})"
done
one=$(median "${ONE[@]}") herd=$(median "${HERD[@]}")
printf '%-6s %12s %12s %16s %16s\n' median "$one" "$herd" "(x$(median "${READ_A[@]}"))" \
    "(x$(median "${READ_B[@]}"))"
echo "herd/single aggregate throughput (medians): $(ratio "$herd" "$one");" \
    "S3 bytes read per replica per herd: x$(median "${READ_A[@]}") and x$(median "${READ_B[@]}") the blob;" \
    "peak RSS: A $(peak_rss_mib "${REPLICAS[0]}") MiB, B $(peak_rss_mib "${REPLICAS[1]}") MiB"
echo "($CLIENTS clients, $MIB MiB blob, 2 replicas on Garage + Redis on this machine, $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg))"

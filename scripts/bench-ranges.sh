#!/usr/bin/env bash
# Benchmark (not a test): one large layer pushed with `vmreg registry push --ranges 1`
# (one stream) against `--ranges 4` (its parts striped over 4 connections), through a
# vmreg server on Garage (S3) and Redis started by scripts/test-services.sh. Two cases:
#   loopback   the client talks to the server directly (BENCH_MIB, default 4096 MiB;
#              BENCH_MIB=0 skips the case)
#   wan        each client connection goes through a proxy that caps it at
#              WAN_RATE_MIB MiB/s (default 50), as one TCP stream is capped on a long
#              link (WAN_MIB, default 4096 MiB; WAN_MIB=0 skips the case)
# Each run pushes the layer once with each setting, on a Garage, Redis and server of its
# own (Garage frees deleted blocks only after a delay); prints each run's seconds and the
# server's CPU seconds per GiB, then the medians and the ratio (one stream's time / 4
# ranges' time).
#
#   scripts/bench-ranges.sh [RUNS]     (default 3)
#
# Environment: VMREG_BIN (default target/release/vmreg, built if missing), BENCH_DIR.
set -euo pipefail
MIB=${BENCH_MIB:-4096}
WAN_MIB=${WAN_MIB:-4096}
WAN_RATE_MIB=${WAN_RATE_MIB:-50}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-ranges python3
# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
stack_down() {
    bench_stop_proxy
    [[ -n $SERVER_PID ]] && bench_stop_server
    vmreg_services_stop
}
cleanup() {
    stack_down
}

# Each run gets a fresh Garage, Redis and server: Garage frees a deleted layer's blocks
# only after a delay, so runs sharing one Garage would pile up every pushed layer on disk.
# With $1 (MiB/s), the pushes go through a proxy capping each connection at that rate.
# Sets TARGET, the URL the client pushes to.
stack_up() {
    VMREG_SERVICES_QUIET=1 vmreg_services_start
    bench_start_server -- --data-dir "$WORK/data" \
        --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix ranges: \
        --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
        --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix ranges
    TARGET=$URL
    if [[ -n ${1:-} ]]; then
        bench_start_proxy "$URL" "$1" up
        TARGET=$PROXY_URL
    fi
}

# Pushes a fresh VM with one layer of $2 MiB to $1 with `--ranges $3`, then deletes it;
# prints seconds and server CPU seconds per GiB.
push_once() {
    local url=$1 mib=$2 ranges=$3 lib=$WORK/lib t0 t1 c0 c1
    rm -rf "$lib"
    bench_write_vm "$lib" "$(python3 -c 'import uuid; print(uuid.uuid4())')" "$mib" >/dev/null
    c0=$(cpu_secs "$SERVER_PID")
    t0=$(now)
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$url" --json --lib "$lib" \
        push --ranges "$ranges" -t t bench >"$WORK/push.json"
    t1=$(now)
    c1=$(cpu_secs "$SERVER_PID")
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --json delete-template bench >/dev/null
    rm -rf "$lib"
    python3 -c 'import sys; t0,t1,c0,c1,mib=map(float,sys.argv[1:]); print(f"{t1-t0:.2f} {(c1-c0)/(mib/1024):.2f}")' \
        "$t0" "$t1" "$c0" "$c1" "$mib"
}

# Runs case $1: RUNS pairs of pushes of a $2 MiB layer, each pair on a fresh stack (with
# $3, through a proxy capped at $3 MiB/s per connection).
run_case() {
    local name=$1 mib=$2 rate=${3:-} run one four
    declare -a ONE FOUR
    echo "bench-ranges: $name, a $mib MiB layer, $RUNS runs" >&2
    printf '%-9s %-4s %8s %12s %8s %12s\n' case run '1 s' '1 cpu s/GiB' '4 s' '4 cpu s/GiB'
    for run in $(seq "$RUNS"); do
        stack_up "$rate"
        read -r one one_cpu < <(push_once "$TARGET" "$mib" 1)
        read -r four four_cpu < <(push_once "$TARGET" "$mib" 4)
        stack_down
        ONE[run]=$one
        FOUR[run]=$four
        printf '%-9s %-4s %8s %12s %8s %12s\n' "$name" "$run" "$one" "$one_cpu" "$four" "$four_cpu"
    done
    local m1 m4
    m1=$(median "${ONE[@]}")
    m4=$(median "${FOUR[@]}")
    printf '%-9s %-4s %8s %12s %8s %12s   4 ranges are %sx faster (%s MB/s vs %s MB/s)\n' "$name" median "$m1" '' "$m4" '' \
        "$(python3 -c 'import sys; print(f"{float(sys.argv[1])/float(sys.argv[2]):.2f}")' "$m1" "$m4")" \
        "$(mbps $((mib << 20)) 0 "$m4")" "$(mbps $((mib << 20)) 0 "$m1")"
}

echo "bench-ranges: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
if [[ $MIB != 0 ]]; then
    run_case loopback "$MIB"
fi
if [[ $WAN_MIB != 0 ]]; then
    run_case "wan-${WAN_RATE_MIB}M" "$WAN_MIB" "$WAN_RATE_MIB"
fi

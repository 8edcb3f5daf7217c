#!/usr/bin/env bash
# Benchmark of the client's transfers (not a test): pushes and pulls a 2 GiB template
# through `vmreg registry` against the embedded server on this machine, and prints MB/s
# for each direction next to plain baselines measured in the same run: `cp` of the same
# files, and `curl` of the biggest file from the server's download endpoint.
#
#   scripts/bench-client.sh [RUNS]        (default 3; prints each run and the medians)
#
# Environment: BENCH_DIR (scratch directory, default under /tmp), BENCH_SIZE_MIB (default
# 2048), VMREG_BIN (default target/release/vmreg, built if missing), CONCURRENCY (default 4).
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-2048}
CONCURRENCY=${CONCURRENCY:-4}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-client curl python3
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
}

UUID=6a1f7c0e-2b4d-4e8a-9c3f-0d5e6f7a8b9c
TOP_MIB=$((SIZE_MIB / 4))
BASE_MIB=$((SIZE_MIB - TOP_MIB))


# One VM of two random (incompressible) layers, 1/4 and 3/4 of the size, and an nvram.
SRC=$WORK/src
echo "bench-client: writing a ${SIZE_MIB} MiB template under $WORK" >&2
mapfile -t LAYERS < <(bench_write_vm "$SRC" "$UUID" "$TOP_MIB" "$BASE_MIB")
TOP=${LAYERS[0]} BASE=${LAYERS[1]}
BYTES=$(cat "$SRC/img_lib/$BASE" "$SRC/img_lib/$TOP" "$SRC/vm_lib/$UUID/nvram" | wc -c)
BASE_BYTES=$(stat -c %s "$SRC/img_lib/$BASE")

start_server() {
    rm -rf "$WORK/data"
    bench_start_server -- --data-dir "$WORK/data"
}

client() {
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --concurrency "$CONCURRENCY" --json "$@"
}

declare -a CP PUSH PULL CURL
printf '%-4s %12s %12s %12s %12s\n' run "cp MB/s" "push MB/s" "pull MB/s" "curl MB/s"
for run in $(seq "$RUNS"); do
    start_server
    rm -rf "$WORK/copy" "$WORK/dst" "$WORK/curl.out"
    sync

    mkdir -p "$WORK/copy"
    t0=$(now)
    cp "$SRC/img_lib/$BASE" "$SRC/img_lib/$TOP" "$SRC/vm_lib/$UUID/nvram" "$WORK/copy/"
    t1=$(now)
    CP[run]=$(mbps "$BYTES" "$t0" "$t1")

    t0=$(now)
    client --lib "$SRC" push -t "run$run" bench >"$WORK/push.json"
    t1=$(now)
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$WORK/push.json")
    [[ $sent == "$BYTES" ]] || { echo "bench-client: push sent $sent of $BYTES bytes" >&2; exit 1; }
    PUSH[run]=$(mbps "$BYTES" "$t0" "$t1")

    t0=$(now)
    client --lib "$WORK/dst" pull bench >"$WORK/pull.json"
    t1=$(now)
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_received"])' "$WORK/pull.json")
    [[ $got == "$BYTES" ]] || { echo "bench-client: pull received $got of $BYTES bytes" >&2; exit 1; }
    cmp -s "$SRC/img_lib/$BASE" "$WORK/dst/img_lib/$BASE" || { echo "bench-client: pulled file differs" >&2; exit 1; }
    PULL[run]=$(mbps "$BYTES" "$t0" "$t1")

    t0=$(now)
    curl -sSf -o "$WORK/curl.out" "$URL/api/v1/files/$BASE"
    t1=$(now)
    CURL[run]=$(mbps "$BASE_BYTES" "$t0" "$t1")

    bench_stop_server
    printf '%-4s %12s %12s %12s %12s\n' "$run" "${CP[run]}" "${PUSH[run]}" "${PULL[run]}" "${CURL[run]}"
done

printf '%-4s %12s %12s %12s %12s\n' median "$(median "${CP[@]}")" "$(median "${PUSH[@]}")" "$(median "${PULL[@]}")" "$(median "${CURL[@]}")"
echo "($(numfmt --to=iec "$BYTES") template, concurrency $CONCURRENCY; curl fetches the $(numfmt --to=iec "$BASE_BYTES") layer alone)"

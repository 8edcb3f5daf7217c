#!/usr/bin/env bash
# Benchmark (not a test): the time of a first push, the one that has no digest cache to
# lean on, against the embedded server on this machine. Each run starts a fresh server
# and forgets the library's digest cache, then pushes VM `bench` of two random layers.
# Prints each run's seconds, `bytes_read` when the client reports it, and the median.
#
#   scripts/bench-first-push.sh [RUNS]     (default 3)
#
# Environment: BENCH_DIR (scratch directory, default under /tmp), BENCH_LAYER_MIB (size of
# each layer, default 1024), VMREG_BIN (default target/release/vmreg, built if missing),
# CONCURRENCY (default 4). Run it with VMREG_BIN set to an older build to compare.
set -euo pipefail

LAYER_MIB=${BENCH_LAYER_MIB:-1024}
CONCURRENCY=${CONCURRENCY:-4}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-first-push python3
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
}


SRC=$WORK/src
echo "bench-first-push: writing 2 x ${LAYER_MIB} MiB layers under $WORK" >&2
bench_write_vm "$SRC" 6a1f7c0e-2b4d-4e8a-9c3f-0d5e6f7a8b9c "$LAYER_MIB" "$LAYER_MIB" >/dev/null

declare -a SECS
printf '%-4s %10s %14s %14s\n' run seconds bytes_sent bytes_read
for run in $(seq "$RUNS"); do
    rm -rf "$WORK/data" "$SRC/.vmreg"
    bench_start_server -- --data-dir "$WORK/data"
    t0=$(now)
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --concurrency "$CONCURRENCY" \
        --json --lib "$SRC" push -t "run$run" bench >"$WORK/push.json"
    t1=$(now)
    bench_stop_server
    SECS[run]=$(python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.2f}")' "$t0" "$t1")
    read -r sent read_ < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["bytes_sent"], r.get("bytes_read", "-"))' "$WORK/push.json")
    printf '%-4s %10s %14s %14s\n' "$run" "${SECS[run]}" "$sent" "$read_"
done
printf '%-4s %10s\n' median "$(median "${SECS[@]}")"

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

RUNS=${1:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
CONCURRENCY=${CONCURRENCY:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${VMREG_BIN:-$ROOT/target/release/vmreg}
if [[ ! -x $BIN ]]; then
    (cd "$ROOT" && cargo build --release)
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-client: needs $tool" >&2; exit 1; }
done
WORK=${BENCH_DIR:-$(mktemp -d /tmp/vmreg-bench.XXXXXX)}
mkdir -p "$WORK"
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

UUID=6a1f7c0e-2b4d-4e8a-9c3f-0d5e6f7a8b9c
TOP=0123456789abcdef0123456789abcdef.ank
BASE=fedcba9876543210fedcba9876543210.ank
TOP_MIB=$((SIZE_MIB / 4))
BASE_MIB=$((SIZE_MIB - TOP_MIB))

# One VM of two random (incompressible) layers, 3/4 and 1/4 of the size, and an nvram.
SRC=$WORK/src
mkdir -p "$SRC/vm_lib/$UUID" "$SRC/img_lib" "$SRC/state_lib"
echo "bench-client: writing a ${SIZE_MIB} MiB template under $WORK" >&2
head -c $((BASE_MIB << 20)) /dev/urandom >"$SRC/img_lib/$BASE"
head -c $((TOP_MIB << 20)) /dev/urandom >"$SRC/img_lib/$TOP"
head -c 262144 /dev/urandom >"$SRC/vm_lib/$UUID/nvram"
cat >"$SRC/vm_lib/$UUID/config.yaml" <<EOF
uuid: $UUID
name: bench
ram: 4G
cpu:
  cores: 2
nvram: true
hard_drives:
- controller: ablk
  file: $TOP
  pci_slot: 4
images:
- $BASE
EOF
BYTES=$(cat "$SRC/img_lib/$BASE" "$SRC/img_lib/$TOP" "$SRC/vm_lib/$UUID/nvram" | wc -c)
BASE_BYTES=$(stat -c %s "$SRC/img_lib/$BASE")

now() { date +%s.%N; }
# MB/s (10^6 bytes per second) of $1 bytes moved between times $2 and $3.
mbps() { python3 -c "import sys; b,t0,t1=map(float,sys.argv[1:]); print(f'{b/(t1-t0)/1e6:.0f}')" "$1" "$2" "$3"; }

start_server() {
    rm -rf "$WORK/data" "$WORK/server.out"
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.out" 2>"$WORK/server.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        URL=$(grep -o 'http://[0-9.:]*' "$WORK/server.out" 2>/dev/null | head -1 || true)
        [[ -n $URL ]] && return
        sleep 0.1
    done
    echo "bench-client: the server did not start" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
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

    stop_server
    printf '%-4s %12s %12s %12s %12s\n' "$run" "${CP[run]}" "${PUSH[run]}" "${PULL[run]}" "${CURL[run]}"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '%-4s %12s %12s %12s %12s\n' median "$(median "${CP[@]}")" "$(median "${PUSH[@]}")" "$(median "${PULL[@]}")" "$(median "${CURL[@]}")"
echo "($(numfmt --to=iec "$BYTES") template, concurrency $CONCURRENCY; curl fetches the $(numfmt --to=iec "$BASE_BYTES") layer alone)"

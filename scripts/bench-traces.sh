#!/usr/bin/env bash
# Benchmark of what tracing costs (not a test; too slow for CI): pushes and pulls a 1 GiB
# template through `vmreg serve` on S3 (Garage) + Redis, once with tracing off and once
# with spans exported over OTLP/HTTP to a live receiver on this machine, RUNS times in
# alternation, and prints MB/s of each, the medians and the traced/untraced ratios.
# Metrics are always on, so both columns include their cost.
#
#   scripts/bench-traces.sh [RUNS]        (default 3)
#
# Environment: BENCH_SIZE_MIB (default 1024), VMREG_BIN (default target/release/vmreg,
# built if missing), CONCURRENCY (client streams, default 4), BENCH_DIR (scratch).
# Needs python3 and what scripts/test-services.sh installs (redis-server, garage).
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
CONCURRENCY=${CONCURRENCY:-4}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-traces python3

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
RECEIVER_PID=
cleanup() {
    # Under `set -e` a killed child's status would become the script's.
    [[ -n $SERVER_PID ]] && bench_stop_server
    if [[ -n $RECEIVER_PID ]]; then
        kill "$RECEIVER_PID" 2>/dev/null || true
        wait "$RECEIVER_PID" 2>/dev/null || true
    fi
    vmreg_services_stop
}
VMREG_SERVICES_QUIET=1 vmreg_services_start

# The live receiver: answers every OTLP/HTTP export with 200 and counts them.
cat >"$WORK/receiver.py" <<'EOF'
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(sys.argv[1], "a") as log:
            log.write(f"{len(body)}\n")
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print(server.server_address[1], flush=True)
server.serve_forever()
EOF
python3 "$WORK/receiver.py" "$WORK/exports" >"$WORK/receiver.out" &
RECEIVER_PID=$!
for _ in $(seq 50); do
    RECEIVER_PORT=$(head -1 "$WORK/receiver.out" 2>/dev/null || true)
    [[ -n $RECEIVER_PORT ]] && break
    sleep 0.1
done
[[ -n ${RECEIVER_PORT:-} ]] || { echo "bench-traces: the receiver did not start" >&2; exit 1; }


UUID=7b2e8d1f-3c5e-4f9b-8d4a-1e6f7a8b9c0d
SRC=$WORK/src
echo "bench-traces: writing a ${SIZE_MIB} MiB template under $WORK" >&2
DISK=$(bench_write_vm "$SRC" "$UUID" "$SIZE_MIB")
BYTES=$(cat "$SRC/img_lib/$DISK" "$SRC/vm_lib/$UUID/nvram" | wc -c)

# Starts a server on fresh Redis and S3 prefixes (so every push sends every byte), with
# the extra environment given as NAME=VALUE arguments.
start_server() {
    local prefix
    prefix=b$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')
    rm -rf "$WORK/data"
    bench_start_server "$@" -- --data-dir "$WORK/data" \
        --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix "$prefix:" \
        --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
        --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix "$prefix"
}

client() {
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --concurrency "$CONCURRENCY" --json "$@"
}

# One push and pull; sets PUSHED and PULLED (MB/s).
transfer() {
    rm -rf "$WORK/dst"
    sync
    local t0 t1 sent got
    t0=$(now)
    client --lib "$SRC" push -t v1 bench >"$WORK/push.json"
    t1=$(now)
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$WORK/push.json")
    [[ $sent == "$BYTES" ]] || { echo "bench-traces: push sent $sent of $BYTES bytes" >&2; exit 1; }
    PUSHED=$(mbps "$BYTES" "$t0" "$t1")
    t0=$(now)
    client --lib "$WORK/dst" pull bench >"$WORK/pull.json"
    t1=$(now)
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_received"])' "$WORK/pull.json")
    [[ $got == "$BYTES" ]] || { echo "bench-traces: pull received $got of $BYTES bytes" >&2; exit 1; }
    PULLED=$(mbps "$BYTES" "$t0" "$t1")
    rm -rf "$WORK/dst"
}

declare -a OFF_PUSH OFF_PULL ON_PUSH ON_PULL
printf '%-6s %14s %14s %14s %14s\n' run "off push MB/s" "on push MB/s" "off pull MB/s" "on pull MB/s"
for run in $(seq "$RUNS"); do
    start_server OTEL_SDK_DISABLED=true
    transfer
    OFF_PUSH[run]=$PUSHED OFF_PULL[run]=$PULLED
    bench_stop_server

    : >"$WORK/exports"
    start_server OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$RECEIVER_PORT" \
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_SERVICE_NAME=vmreg-bench
    transfer
    bench_stop_server
    # Spans are exported while they are made and the rest at shutdown: none means off.
    [[ -s $WORK/exports ]] || { echo "bench-traces: the receiver got no spans" >&2; exit 1; }
    ON_PUSH[run]=$PUSHED ON_PULL[run]=$PULLED
    printf '%-6s %14s %14s %14s %14s   (%s exports, %s bytes)\n' "$run" "${OFF_PUSH[run]}" "${ON_PUSH[run]}" \
        "${OFF_PULL[run]}" "${ON_PULL[run]}" "$(wc -l <"$WORK/exports")" \
        "$(awk '{s+=$1} END {print s}' "$WORK/exports")"
done

ratio() { python3 -c "import sys; print(f'{float(sys.argv[2])/float(sys.argv[1]):.3f}')" "$1" "$2"; }
mo=$(median "${OFF_PUSH[@]}") mn=$(median "${ON_PUSH[@]}") lo=$(median "${OFF_PULL[@]}") ln=$(median "${ON_PULL[@]}")
printf '%-6s %14s %14s %14s %14s\n' median "$mo" "$mn" "$lo" "$ln"
echo "traced/untraced: push $(ratio "$mo" "$mn"), pull $(ratio "$lo" "$ln")" \
    "($(numfmt --to=iec "$BYTES") template through S3 (Garage) + Redis, concurrency $CONCURRENCY, $(nproc) cores)"

#!/usr/bin/env bash
# Helpers of the benchmark scripts, sourced by them without arguments (so that $1 is the
# script's own); not run on its own. Sourcing sets ROOT (the checkout) and RUNS (the
# script's first argument, default 3).
#
#   bench_prepare NAME TOOL…          sets BIN (VMREG_BIN, else a release build made when
#                                    missing); fails unless every TOOL is installed; makes
#                                    the scratch directory WORK (BENCH_DIR, else a fresh
#                                    /tmp/vmreg-NAME.*) and owns the traps: on exit, the
#                                    script's own `cleanup` runs when it defines one (its
#                                    servers, services, proxies), then WORK is removed
#   bench_start_server NAME=VALUE… -- SERVE-ARGS…   starts `vmreg serve` on a free loopback
#                                    port with that environment; sets SERVER_PID and URL
#   bench_stop_server                stops it
#   bench_write_vm LIB UUID MIB…      writes VM `bench` into library LIB: one layer of
#                                    random bytes per MIB (the first is the hard drive)
#                                    and an nvram; prints the layer files' names
#   bench_start_vmreg_s3 PART        starts it on S3 + Redis (scripts/test-services.sh's
#                                    variables) under fresh prefixes, with PART-byte parts
#   bench_start_proxy URL RATE up|both
#                                    starts a TCP proxy to URL that caps each connection
#                                    at RATE MiB/s (towards URL only, or both ways), as
#                                    one TCP stream is capped on a long link; sets
#                                    PROXY_URL and PROXY_PID (bench_stop_proxy stops it)
#   now, mbps BYTES T0 T1, median N…  timing and arithmetic
#   cpu_secs PID, per_gib A B BYTES, ratio A B, fresh_prefix

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
RUNS=${1:-3}

bench_write_vm() {
    local lib=$1 uuid=$2 i=0 file config
    shift 2
    mkdir -p "$lib/vm_lib/$uuid" "$lib/img_lib" "$lib/state_lib"
    head -c 262144 /dev/urandom >"$lib/vm_lib/$uuid/nvram"
    config="uuid: $uuid"$'\nname: bench\nram: 4G\ncpu:\n  cores: 2\nnvram: true\n'
    for mib in "$@"; do
        file=$(printf '%032x.ank' "$i")
        head -c $((mib << 20)) /dev/urandom >"$lib/img_lib/$file"
        if [[ $i == 0 ]]; then
            config+=$'hard_drives:\n- controller: ablk\n'"  file: $file"$'\n  pci_slot: 4\n'
        else
            [[ $i == 1 ]] && config+=$'images:\n'
            config+="- $file"$'\n'
        fi
        echo "$file"
        i=$((i + 1))
    done
    printf '%s' "$config" >"$lib/vm_lib/$uuid/config.yaml"
}

bench_start_server() {
    local env=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        env+=("$1")
        shift
    done
    shift
    rm -rf "$WORK/server.out"
    env "${env[@]}" "$BIN" serve --listen 127.0.0.1:0 "$@" >"$WORK/server.out" 2>"$WORK/server.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        URL=$(grep -o 'http://[0-9.:]*' "$WORK/server.out" 2>/dev/null | head -1 || true)
        [[ -n $URL ]] && return
        sleep 0.1
    done
    echo "$(basename "$0"): the server did not start" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

bench_stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# vmreg on S3 + Redis under fresh prefixes (so every push sends every byte); sets URL.
bench_start_vmreg_s3() {
    local prefix
    prefix=$(fresh_prefix)
    rm -rf "$WORK/data"
    bench_start_server -- --data-dir "$WORK/data" --part-size "$1" \
        --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix "$prefix:" \
        --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
        --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix "$prefix"
}

bench_start_proxy() {
    python3 - "$1" "$2" "$3" >"$WORK/proxy.out" 2>"$WORK/proxy.log" <<'EOF' &
import asyncio, sys, time
host, port = sys.argv[1].split("//")[1].split(":")
rate = float(sys.argv[2]) * (1 << 20)
both = sys.argv[3] == "both"

async def pipe(reader, writer, capped):
    start, moved = time.monotonic(), 0
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
            if capped:
                moved += len(data)
                ahead = moved / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def serve(reader, writer):
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, both))

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
EOF
    PROXY_PID=$!
    for _ in $(seq 50); do
        [[ -s $WORK/proxy.out ]] && break
        sleep 0.1
    done
    # shellcheck disable=SC2034 # used by the scripts that source this file
    PROXY_URL=http://127.0.0.1:$(head -1 "$WORK/proxy.out")
}

bench_stop_proxy() {
    if [[ -n ${PROXY_PID:-} ]]; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    PROXY_PID=
}

now() { date +%s.%N; }

# User + system CPU seconds the process $1 (all its threads) has used so far.
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
# CPU seconds per GiB between readings $1 and $2 for $3 bytes.
per_gib() { python3 -c "import sys; a,b,n=map(float,sys.argv[1:]); print(f'{(b-a)/(n/2**30):.2f}')" "$1" "$2" "$3"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
fresh_prefix() { echo "b$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"; }

# MB/s (10^6 bytes per second) of $1 bytes moved between times $2 and $3.
mbps() { python3 -c "import sys; b,t0,t1=map(float,sys.argv[1:]); print(f'{b/(t1-t0)/1e6:.1f}')" "$1" "$2" "$3"; }

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Sets BIN to the vmreg binary to measure (VMREG_BIN, else a release build, made when
# missing), fails unless every tool named after the script's NAME is installed, makes the
# scratch directory WORK and traps the script's exit to clean up after it.
bench_prepare() {
    local name=$1 tool
    shift
    BIN=${VMREG_BIN:-$ROOT/target/release/vmreg}
    if [[ ! -x $BIN ]]; then
        (cd "$ROOT" && cargo build --release --bin vmreg)
    fi
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$name: needs $tool" >&2; exit 1; }
    done
    WORK=${BENCH_DIR:-$(mktemp -d "/tmp/vmreg-$name.XXXXXX")}
    mkdir -p "$WORK"
    SERVER_PID=
    trap bench_exit EXIT
    # An interrupted run cleans up too.
    trap 'exit 130' INT TERM
}

# The EXIT trap: the script's own `cleanup` first, as it may still use WORK, then WORK.
bench_exit() {
    if declare -F cleanup >/dev/null; then
        # A cleanup step that fails (a process already gone) must not keep WORK behind.
        cleanup || true
    fi
    rm -rf "$WORK"
}

#!/usr/bin/env bash
# Benchmark against the peer (not a test; too slow for CI): moves the same random blob
# through Debian's docker-registry (distribution 2.8, S3 driver) and through vmreg, both on
# the same S3 (Garage) on this machine, and prints MB/s of each, the medians, and the
# vmreg/docker-registry and vmreg/direct-S3 ratios measured in the same run. Per size and run:
#   docker-registry  curl: POST /v2/<name>/blobs/uploads/, PUT <location>?digest= with the
#                    whole blob streamed (a monolithic upload); GET /v2/<name>/blobs/<digest>
#   vmreg OCI        the same curl requests against vmreg's /v2/ (S3 + Redis)
#   vmreg client     `vmreg registry push`/`pull` of a template whose disk is that blob
#   S3 direct        curl with SigV4 straight to Garage: one PutObject, one GetObject
#                    (the floor under both registries; its CPU column is Garage's)
# Both registries proxy the bytes (no redirect to S3), S3 parts are 8 MiB on both, pulled
# bytes land on disk and are compared with the source. The server's CPU (user + system
# seconds per GiB, from /proc) is printed for each registry and direction.
# Garage deduplicates blocks, so an unmeasured push of the blob runs first: every measured
# push then meets the same store state.
#
#   scripts/bench-peer.sh [RUNS]          (default 3)
#
# Environment: BENCH_SIZES_MIB (blob sizes, default "1024 4096"; e.g. "2048", a size is
# skipped unless the disk has 3x it and 2 GiB more free), VMREG_BIN (default
# target/release/vmreg, built if missing), CONCURRENCY (the client's parallel uploads and
# downloads of ranges, default 4), PARALLEL (default 1: with N > 1 the two registries' columns
# push the blob to N repositories at once and pull it N times at once, N uploads in flight as
# with `PARALLEL=4 BENCH_SIZES_MIB=2048`; their rates count all N copies), S3_RATE_MIB
# (unset: S3 is Garage on loopback; with a rate every S3 connection goes through a proxy
# capping it at that many MiB/s each way, as one stream to a remote S3 is capped),
# BENCH_DIR (scratch). Installs docker-registry (apt) when absent; needs curl, python3,
# and what scripts/test-services.sh installs (redis-server, garage).
set -euo pipefail

SIZES=${BENCH_SIZES_MIB:-1024 4096}
CONCURRENCY=${CONCURRENCY:-4}
PARALLEL=${PARALLEL:-1}
S3_RATE_MIB=${S3_RATE_MIB:-}
PART=8388608
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-peer curl python3 sha256sum
if ! command -v docker-registry >/dev/null; then
    echo "bench-peer: installing docker-registry (apt)" >&2
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker-registry >&2
fi

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
PEER_PID=
stop_peer() {
    if [[ -n $PEER_PID ]]; then
        kill "$PEER_PID" 2>/dev/null || true
        wait "$PEER_PID" 2>/dev/null || true
        PEER_PID=
    fi
}
cleanup() {
    # Under `set -e` a killed child's status would become the script's.
    [[ -n $SERVER_PID ]] && bench_stop_server
    stop_peer
    bench_stop_proxy
    vmreg_services_stop
}
VMREG_SERVICES_QUIET=1 vmreg_services_start
# A remote S3, where one connection is capped (as a single stream is on a long link):
# every S3 client here, both registries and the direct columns, goes through the proxy.
if [[ -n $S3_RATE_MIB ]]; then
    bench_start_proxy "$VMREG_TEST_S3_ENDPOINT" "$S3_RATE_MIB" both
    VMREG_TEST_S3_ENDPOINT=$PROXY_URL
fi

UUID=8c3f9e2a-4d6f-4a0b-9e5b-2f7a8b9c0d1e
REPO=bench/vm

# docker-registry on the same bucket under its own root directory; sets PEER_PID, PEER_URL.
# It panics when AWS_CA_BUNDLE is set, and needs no other AWS variable.
start_peer() {
    local port
    port=$(_vmreg_free_port)
    cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: $VMREG_TEST_S3_REGION
    regionendpoint: $VMREG_TEST_S3_ENDPOINT
    bucket: $VMREG_TEST_S3_BUCKET
    rootdirectory: /$(fresh_prefix)
    secure: false
    v4auth: true
    chunksize: $PART
  delete:
    enabled: true
  redirect:
    disable: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: bench-peer
EOF
    env -u AWS_CA_BUNDLE docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
    PEER_PID=$!
    PEER_URL=http://127.0.0.1:$port
    _vmreg_wait_port "$port" 30 || {
        echo "bench-peer: docker-registry did not start" >&2
        cat "$WORK/registry.log" >&2
        exit 1
    }
}

start_vmreg() { bench_start_vmreg_s3 "$PART"; }

# Monolithic OCI blob upload of $2 (digest $3) to the registry at $1.
oci_push() {
    local base=$1 file=$2 digest=$3 location sep
    location=$(curl -sSf -X POST -D - -o /dev/null "$base/v2/$REPO/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
    [[ -n $location ]] || { echo "bench-peer: no upload location from $base" >&2; exit 1; }
    [[ $location == /* ]] && location=$base$location
    sep='?'
    [[ $location == *\?* ]] && sep='&'
    curl -sSf -T "$file" -H 'Content-Type: application/octet-stream' -o /dev/null \
        "$location${sep}digest=$digest"
}

# Curl's SigV4 credentials in a config file, so no secret is on a command line.
s3_config() {
    (umask 077 && printf 'user = "%s:%s"\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3.curl")
}
s3_curl() {
    curl -sSf -K "$WORK/s3.curl" --aws-sigv4 "aws:amz:$VMREG_TEST_S3_REGION:s3" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}
s3_push() { s3_curl -T "$BLOB" -o /dev/null "$VMREG_TEST_S3_ENDPOINT/$VMREG_TEST_S3_BUCKET/$1/blob"; }
s3_pull() { s3_curl -o "$2" "$VMREG_TEST_S3_ENDPOINT/$VMREG_TEST_S3_BUCKET/$1/blob"; }

oci_pull() { curl -sSf -o "$3" "$1/v2/$REPO/blobs/$2"; }

# Runs "$@" once per repository bench/vm1..$PARALLEL at once ({} in an argument becomes the
# copy's number); fails if any copy fails.
each_copy() {
    local i pids=() pid
    for i in $(seq "$PARALLEL"); do
        REPO=bench/vm$i "${@//\{\}/$i}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}

# `vmreg registry` with its JSON report in $WORK/client.json.
client() {
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --concurrency "$CONCURRENCY" --json "$@" \
        >"$WORK/client.json"
}

# Fails unless the client's report says field $1 is $CLIENT_BYTES.
moved() {
    local n
    n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/client.json" "$1")
    [[ $n == "$CLIENT_BYTES" ]] || { echo "bench-peer: $1 is $n, not $CLIENT_BYTES" >&2; exit 1; }
}

# Times "$@" as a transfer of $MOVED bytes (default $BYTES) through the server $1; sets
# RATE (MB/s) and CPU (the server's seconds per GiB).
measure() {
    local pid=$1 moved=${MOVED:-$BYTES} c0 c1 t0 t1
    shift
    sync
    c0=$(cpu_secs "$pid")
    t0=$(now)
    "$@"
    t1=$(now)
    c1=$(cpu_secs "$pid")
    RATE=$(mbps "$moved" "$t0" "$t1")
    CPU=$(per_gib "$c0" "$c1" "$moved")
}

# An OCI push then pull of the blob through the server $1 at $2: sets PUSH_RATE and
# PUSH_CPU, and RATE and CPU for the pull.
oci_round() {
    local i
    MOVED=$((PARALLEL * BYTES)) measure "$1" each_copy oci_push "$2" "$BLOB" "$DIGEST"
    PUSH_RATE=$RATE PUSH_CPU=$CPU
    MOVED=$((PARALLEL * BYTES)) measure "$1" each_copy oci_pull "$2" "$DIGEST" "$WORK/pulled{}"
    for i in $(seq "$PARALLEL"); do
        same "$BLOB" "$WORK/pulled$i"
        rm -f "$WORK/pulled$i"
    done
}

row() { printf '%-6s %14s %14s %14s %14s %14s %14s %14s %14s\n' "$@"; }

same() { cmp -s "$1" "$2" || { echo "bench-peer: pulled $2 differs" >&2; exit 1; }; }

echo "bench-peer: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(basename "$BIN")" \
    "from $(dirname "$BIN" | xargs basename)${S3_RATE_MIB:+, each S3 connection capped at $S3_RATE_MIB MiB/s}" >&2
s3_config
for mib in $SIZES; do
    free_mib=$(df -Pm "$WORK" | awk 'NR == 2 {print $4}')
    # The source, the store's copy and PARALLEL pulled copies, and 2 GiB for the rest.
    if ((free_mib < (2 + PARALLEL) * mib + 2048)); then
        echo "bench-peer: skipping $mib MiB: $free_mib MiB free, needs $(((2 + PARALLEL) * mib + 2048))" >&2
        continue
    fi
    rm -rf "$WORK/src"
    echo "bench-peer: writing a $mib MiB blob under $WORK" >&2
    DISK=$(bench_write_vm "$WORK/src" "$UUID" "$mib")
    BLOB=$WORK/src/img_lib/$DISK
    BYTES=$(stat -c %s "$BLOB")
    CLIENT_BYTES=$(cat "$BLOB" "$WORK/src/vm_lib/$UUID/nvram" | wc -c)
    DIGEST=sha256:$(sha256sum "$BLOB" | cut -d' ' -f1)

    start_vmreg
    oci_push "$URL" "$BLOB" "$DIGEST"
    bench_stop_server

    declare -a SP SL DP DL OP OL CP CL SPC SLC DPC DLC OPC OLC CPC CLC
    echo "== $mib MiB: MB/s (server CPU s/GiB); peer and oci: $PARALLEL upload(s) and pull(s) at once"
    row run "S3 push" "peer push" "oci push" "client push" "S3 pull" "peer pull" "oci pull" "client pull"
    for run in $(seq "$RUNS"); do
        key=$(fresh_prefix)
        measure "$_VMREG_GARAGE_PID" s3_push "$key"
        SP[run]=$RATE SPC[run]=$CPU
        measure "$_VMREG_GARAGE_PID" s3_pull "$key" "$WORK/pulled"
        SL[run]=$RATE SLC[run]=$CPU
        same "$BLOB" "$WORK/pulled"
        rm -f "$WORK/pulled"

        start_peer
        oci_round "$PEER_PID" "$PEER_URL"
        DP[run]=$PUSH_RATE DPC[run]=$PUSH_CPU DL[run]=$RATE DLC[run]=$CPU
        stop_peer

        start_vmreg
        oci_round "$SERVER_PID" "$URL"
        OP[run]=$PUSH_RATE OPC[run]=$PUSH_CPU OL[run]=$RATE OLC[run]=$CPU
        bench_stop_server

        # The client moves the nvram too (256 KiB); its rate counts every byte it moved.
        start_vmreg
        MOVED=$CLIENT_BYTES measure "$SERVER_PID" client --lib "$WORK/src" push -t v1 bench
        moved bytes_sent
        CP[run]=$RATE CPC[run]=$CPU
        rm -rf "$WORK/dst"
        MOVED=$CLIENT_BYTES measure "$SERVER_PID" client --lib "$WORK/dst" pull bench
        moved bytes_received
        CL[run]=$RATE CLC[run]=$CPU
        same "$BLOB" "$WORK/dst/img_lib/$DISK"
        rm -rf "$WORK/dst"
        bench_stop_server

        row "$run" "${SP[run]} (${SPC[run]})" "${DP[run]} (${DPC[run]})" "${OP[run]} (${OPC[run]})" \
            "${CP[run]} (${CPC[run]})" "${SL[run]} (${SLC[run]})" "${DL[run]} (${DLC[run]})" \
            "${OL[run]} (${OLC[run]})" "${CL[run]} (${CLC[run]})"
    done
    sp=$(median "${SP[@]}") dp=$(median "${DP[@]}") op=$(median "${OP[@]}") cp=$(median "${CP[@]}")
    sl=$(median "${SL[@]}") dl=$(median "${DL[@]}") ol=$(median "${OL[@]}") cl=$(median "${CL[@]}")
    row median "$sp ($(median "${SPC[@]}"))" "$dp ($(median "${DPC[@]}"))" "$op ($(median "${OPC[@]}"))" \
        "$cp ($(median "${CPC[@]}"))" "$sl ($(median "${SLC[@]}"))" "$dl ($(median "${DLC[@]}"))" \
        "$ol ($(median "${OLC[@]}"))" "$cl ($(median "${CLC[@]}"))"
    echo "vmreg/docker-registry (medians): push OCI $(ratio "$op" "$dp"), client $(ratio "$cp" "$dp");" \
        "pull OCI $(ratio "$ol" "$dl"), client $(ratio "$cl" "$dl")"
    if ((PARALLEL == 1)); then
        echo "vmreg/S3 direct (medians): push OCI $(ratio "$op" "$sp"), client $(ratio "$cp" "$sp");" \
            "pull OCI $(ratio "$ol" "$sl"), client $(ratio "$cl" "$sl")"
    fi
    unset SP SL DP DL OP OL CP CL SPC SLC DPC DLC OPC OLC CPC CLC
    rm -rf "$WORK/src"
done
echo "(Garage + Redis on this machine, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
    "client concurrency $CONCURRENCY, $PART-byte parts)"

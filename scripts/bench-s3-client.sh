#!/usr/bin/env bash
# Benchmark of the client against a plain S3 client (not a test): moves the same random file
# straight to and from Garage with boto3's managed transfer (multipart upload and ranged
# download, 8 MiB parts, 4 in flight) and through vmreg on the same Garage with
# `vmreg registry push`/`pull` (8 MiB parts, 4 ranges in flight), and prints MB/s of each,
# the medians and the vmreg/boto3 ratios measured in the same run. Next to each rate, CPU
# seconds per GiB: the client's (user + system) / the vmreg server's / Garage's. boto3's
# figures are its transfer call alone (timed inside Python, without the interpreter's start
# and the import, about 0.5 s); vmreg's are the whole command, start to exit.
# Garage deduplicates blocks, so an unmeasured push of the file runs first: every measured
# push then meets the same store state. Pulled bytes land on disk and are compared with the
# source.
#
#   scripts/bench-s3-client.sh [RUNS]     (default 3)
#
# Environment: BENCH_SIZE_MIB (default 2048; skipped unless the disk has 3x it and 2 GiB
# more free), VMREG_BIN (default target/release/vmreg, built if missing), CONCURRENCY
# (default 4), BENCH_DIR (scratch). Uses boto3 from python3 when it imports, else installs it
# (PyPI) into a virtualenv under target/; needs what scripts/test-services.sh installs.
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-2048}
CONCURRENCY=${CONCURRENCY:-4}
PART=8388608
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-s3-client
PY=python3
if ! "$PY" -c 'import boto3' 2>/dev/null; then
    PY=$ROOT/target/boto3-venv/bin/python
    if ! "$PY" -c 'import boto3' 2>/dev/null; then
        echo "bench-s3-client: installing boto3 (PyPI) into target/boto3-venv" >&2
        python3 -m venv "$ROOT/target/boto3-venv"
        "$PY" -m pip install -q boto3
    fi
fi
free_mib=$(df -Pm "$WORK" | awk 'NR == 2 {print $4}')
if ((free_mib < 3 * SIZE_MIB + 2048)); then
    echo "bench-s3-client: $free_mib MiB free, needs $((3 * SIZE_MIB + 2048))" >&2
    exit 1
fi

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
cleanup() {
    [[ -n $SERVER_PID ]] && bench_stop_server
    vmreg_services_stop
}
VMREG_SERVICES_QUIET=1 vmreg_services_start

UUID=3e9b1f4c-7a2d-4c6e-8f0a-5b1d2c3e4f60
# boto3's own timing of the transfer (wall and CPU seconds) lands in $WORK/inner.
boto3() { "$PY" "$ROOT/scripts/bench_boto3.py" "$@" "$PART" "$CONCURRENCY" >"$WORK/inner"; }
client() {
    VMREG_CONFIG=$WORK/remotes.yaml "$BIN" registry -a "$URL" --concurrency "$CONCURRENCY" \
        --json "$@" >"$WORK/client.json"
}
same() { cmp -s "$1" "$2" || { echo "bench-s3-client: pulled $2 differs" >&2; exit 1; }; }

# Times the client command "$@" moving $MOVED bytes with the vmreg server's pid in
# $SERVER_PID (none for boto3); sets RATE (MB/s) and CPU ("client / server / Garage" s/GiB).
# A client that timed its transfer itself (boto3, in $WORK/inner) is taken at its word.
measure() {
    local s0=0 s1=0 g0 g1 t0 t1 own
    rm -f "$WORK/inner"
    sync
    [[ -n $SERVER_PID ]] && s0=$(cpu_secs "$SERVER_PID")
    g0=$(cpu_secs "$_VMREG_GARAGE_PID")
    t0=$(now)
    # The subshell's `times` ends with the CPU its children (the client) used.
    ("$@" && times >"$WORK/times")
    t1=$(now)
    g1=$(cpu_secs "$_VMREG_GARAGE_PID")
    [[ -n $SERVER_PID ]] && s1=$(cpu_secs "$SERVER_PID")
    own=$(tail -1 "$WORK/times" | tr -d 's' | awk -F'[ m]' '{print $1 * 60 + $2 + $3 * 60 + $4}')
    if [[ -s $WORK/inner ]]; then
        read -r t1 own <"$WORK/inner"
        t0=0
    fi
    RATE=$(mbps "$MOVED" "$t0" "$t1")
    CPU="$(per_gib 0 "$own" "$MOVED")"
    CPU+=" / $(per_gib "$s0" "$s1" "$MOVED") / $(per_gib "$g0" "$g1" "$MOVED")"
}

row() { printf '%-6s %26s %26s %26s %26s\n' "$@"; }

echo "bench-s3-client: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
    "$(basename "$BIN") from $(dirname "$BIN" | xargs basename), boto3 $("$PY" -c 'import boto3; print(boto3.__version__)')" >&2
echo "bench-s3-client: writing a $SIZE_MIB MiB file under $WORK" >&2
DISK=$(bench_write_vm "$WORK/src" "$UUID" "$SIZE_MIB")
FILE=$WORK/src/img_lib/$DISK
BYTES=$(stat -c %s "$FILE")
# The client moves the nvram too (256 KiB); its rate counts every byte it moved.
CLIENT_BYTES=$(cat "$FILE" "$WORK/src/vm_lib/$UUID/nvram" | wc -c)
boto3 put "$FILE" "$(fresh_prefix)/warm"

declare -a BP BL CP CL BPC BLC CPC CLC
echo "== $SIZE_MIB MiB, $CONCURRENCY in flight, $PART-byte parts: MB/s (CPU s/GiB: client / vmreg server / Garage)"
row run "boto3 push" "vmreg push" "boto3 pull" "vmreg pull"
for run in $(seq "$RUNS"); do
    key=$(fresh_prefix)/file
    MOVED=$BYTES measure boto3 put "$FILE" "$key"
    BP[run]=$RATE BPC[run]=$CPU
    MOVED=$BYTES measure boto3 get "$key" "$WORK/pulled"
    BL[run]=$RATE BLC[run]=$CPU
    same "$FILE" "$WORK/pulled"
    rm -f "$WORK/pulled"

    bench_start_vmreg_s3 "$PART"
    MOVED=$CLIENT_BYTES measure client --lib "$WORK/src" push -t v1 bench
    CP[run]=$RATE CPC[run]=$CPU
    rm -rf "$WORK/dst"
    MOVED=$CLIENT_BYTES measure client --lib "$WORK/dst" pull bench
    CL[run]=$RATE CLC[run]=$CPU
    same "$FILE" "$WORK/dst/img_lib/$DISK"
    rm -rf "$WORK/dst"
    bench_stop_server

    row "$run" "${BP[run]} (${BPC[run]})" "${CP[run]} (${CPC[run]})" "${BL[run]} (${BLC[run]})" \
        "${CL[run]} (${CLC[run]})"
done
bp=$(median "${BP[@]}") cp=$(median "${CP[@]}") bl=$(median "${BL[@]}") cl=$(median "${CL[@]}")
row median "$bp" "$cp" "$bl" "$cl"
echo "vmreg/boto3 (medians): push $(ratio "$cp" "$bp"), pull $(ratio "$cl" "$bl")"
echo "(Garage + Redis on this machine, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"

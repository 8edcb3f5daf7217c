#!/usr/bin/env bash
# Benchmark of concurrency without memory growth (not a test): one vmreg replica on
# Garage + Redis moves COPIES distinct blobs of BENCH_MIB MiB at once, per run:
#   push 1     one upload alone                       push N    COPIES uploads at once
#   pull 1     one download alone                     pull N    COPIES downloads at once
#   mixed      COPIES uploads (new blobs) and COPIES downloads at the same time
# and prints each phase's aggregate MB/s, its ratio to one transfer alone measured in the
# same run (mixed: to one push then one pull of the same size, one after the other, the
# rate the same bytes would move at without concurrency), and the server's peak resident
# memory during the phase (VmHWM, reset through /proc/PID/clear_refs before each phase, so
# a phase's peak is its own, on top of what earlier phases left allocated; "at start" is
# what was resident when the phase began). Medians over
# RUNS; the last line is the peak over all phases and runs.
#
# Transfers are what users run, moved with curl through /v2/ so that no file touches the
# disk: an upload is one stream per file, as `vmreg registry push` and OCI clients send a
# file (POST, then one monolithic PUT with its digest); a download is STREAMS ranged GETs
# of the file at once, as `vmreg registry pull` fetches a big file (4 ranges in flight by
# default), its bytes going to /dev/null (sizes checked; one download per run through the
# server is checked against the digest). Bodies are generated: one random MiB repeated,
# with a header naming the blob, so every blob is distinct for the registry while Garage
# stores each distinct MiB block once (its disk use stays a few MiB).
#
#   scripts/bench-concurrency.sh [RUNS]          (default 3)
#
# Environment: BENCH_MIB (default 1024), COPIES (default 8), STREAMS (default 4),
# VMREG_BIN (default target/release/vmreg, built if missing), SERVE_ARGS (extra `vmreg
# serve` flags), SERVE_ENV (extra environment of the server, e.g. "MALLOC_ARENA_MAX=8"),
# BENCH_DIR.
set -euo pipefail

MIB=${BENCH_MIB:-1024}
COPIES=${COPIES:-8}
STREAMS=${STREAMS:-4}
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_prepare bench-concurrency curl python3

# shellcheck source=scripts/test-services.sh
source "$ROOT/scripts/test-services.sh"
cleanup() {
    bench_stop_server
    vmreg_services_stop
}
VMREG_SERVICES_QUIET=1 vmreg_services_start

BYTES=$((MIB << 20))
REPO=bench/concurrency
# shellcheck disable=SC2086
bench_start_server ${SERVE_ENV:-} -- --data-dir "$WORK/data" \
    --redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix conc: \
    --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT" \
    --s3-region "$VMREG_TEST_S3_REGION" --s3-path-style --s3-prefix conc ${SERVE_ARGS:-}

# The generator of blob bodies: `blob.py emit NAME` writes blob NAME, `blob.py digest
# NAME…` prints their digests, one a line.
head -c $((1 << 20)) /dev/urandom >"$WORK/block"
cat >"$WORK/blob.py" <<'EOF'
import hashlib, os, sys
mode, names = sys.argv[1], sys.argv[2:]
size = int(os.environ["BLOB_BYTES"])
block = open(os.environ["BLOB_BLOCK"], "rb").read()
def chunks(name):
    head = name.encode().ljust(64, b"\0")
    yield head + block[len(head):]
    left = size - len(block)
    while left > 0:
        yield block[:left] if left < len(block) else block
        left -= len(block)
if mode == "emit":
    out = sys.stdout.buffer
    for c in chunks(names[0]):
        out.write(c)
    out.flush()
else:
    for name in names:
        h = hashlib.sha256()
        for c in chunks(name):
            h.update(c)
        print("sha256:" + h.hexdigest())
EOF
export BLOB_BYTES=$BYTES BLOB_BLOCK=$WORK/block
digests() { python3 "$WORK/blob.py" digest "$@"; }

# Monolithic upload of the generated blob $1 (digest $2) through /v2/.
push() {
    local location sep
    location=$(curl -sSf -X POST -D - -o /dev/null "$URL/v2/$REPO/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
    [[ -n $location ]] || { echo "bench-concurrency: no upload location" >&2; return 1; }
    [[ $location == /* ]] && location=$URL$location
    sep='?'
    [[ $location == *\?* ]] && sep='&'
    python3 "$WORK/blob.py" emit "$1" |
        curl -sSf -T - -H 'Content-Type: application/octet-stream' \
            -o /dev/null "$location${sep}digest=$2"
}

# Download of blob $1 as STREAMS ranged GETs at once; fails unless every byte arrived.
pull() {
    local part=$(((BYTES + STREAMS - 1) / STREAMS)) i start end pids=() got=0 n
    local sizes=$WORK/pull.$BASHPID
    for i in $(seq 0 $((STREAMS - 1))); do
        start=$((i * part))
        end=$(((i + 1) * part < BYTES ? (i + 1) * part : BYTES))
        curl -sSf -r "$start-$((end - 1))" -o /dev/null -w '%{size_download}\n' \
            "$URL/v2/$REPO/blobs/$1" >"$sizes.$i" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[i]}"
        n=$(cat "$sizes.$i")
        got=$((got + n))
    done
    rm -f "$sizes".*
    [[ $got == "$BYTES" ]] || { echo "bench-concurrency: a pull got $got bytes, not $BYTES" >&2; return 1; }
}

check() {
    local got
    got=sha256:$(curl -sSf "$URL/v2/$REPO/blobs/$1" | sha256sum | cut -d' ' -f1)
    [[ $got == "$1" ]] || { echo "bench-concurrency: pulled bytes of $1 differ" >&2; exit 1; }
}

# Resets the peak to what is resident now, which it records in START (MiB).
reset_peak() {
    START=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
    echo 5 >"/proc/$SERVER_PID/clear_refs"
}
peak_rss_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
# The rate of a transfer at rate $1 followed by one of the same size at rate $2.
one_after_other() { python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{2/(1/a+1/b):.1f}')" "$1" "$2"; }

# Waits for every transfer started in the background; fails if any failed.
wait_all() {
    local pid failed=0
    for pid in "$@"; do
        wait "$pid" || failed=1
    done
    return "$failed"
}

# Runs phase $1, a function that starts its transfers in the background (adding their pids
# to PIDS), and waits for them all; sets T0 and T1 around it, PHASE_PEAK (MiB resident at
# most during it) and START (MiB resident as it began).
at_once() {
    reset_peak
    PIDS=()
    T0=$(now)
    "$1"
    wait_all "${PIDS[@]}"
    T1=$(now)
    PHASE_PEAK=$(peak_rss_mib)
}
# The phases: COPIES pushes of blobs 1..COPIES, COPIES pulls of them, and COPIES pushes of
# new blobs with COPIES pulls of the first ones.
pushes() {
    local i
    for i in $(seq 1 "$COPIES"); do
        push "${names[i]}" "${sums[i]}" &
        PIDS+=($!)
    done
}
pulls() {
    local i
    for i in $(seq 1 "$COPIES"); do
        pull "${sums[i]}" &
        PIDS+=($!)
    done
}
pushes_and_pulls() {
    local i
    for i in $(seq 1 "$COPIES"); do
        push "${names[COPIES + i]}" "${sums[COPIES + i]}" &
        PIDS+=($!)
        pull "${sums[i]}" &
        PIDS+=($!)
    done
}

echo "bench-concurrency: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
    "$(basename "$BIN") from $(dirname "$BIN" | xargs basename), $COPIES x $MIB MiB," \
    "$STREAMS ranges per pull, ${SERVE_ARGS:-default settings} ${SERVE_ENV:-}" >&2
declare -a P1 PN PR L1 LN LR MX MR RP RL RM SP SL SM
PEAK=0
printf '%-6s %9s %9s %6s %9s %9s %6s %9s %6s %18s %12s\n' run "push 1" "push N" "(x)" \
    "pull 1" "pull N" "(x)" mixed "(x)" "peak MiB push/pull/mixed" "(at start)"
for run in $(seq "$RUNS"); do
    names=()
    for i in $(seq 0 $((2 * COPIES))); do
        names+=("run$run-$i-$RANDOM$RANDOM")
    done
    mapfile -t sums < <(digests "${names[@]}")

    # One push alone, then COPIES at once (blobs 1..COPIES).
    t0=$(now)
    push "${names[0]}" "${sums[0]}"
    t1=$(now)
    P1[run]=$(mbps "$BYTES" "$t0" "$t1")
    at_once pushes
    RP[run]=$PHASE_PEAK SP[run]=$START
    PN[run]=$(mbps $((BYTES * COPIES)) "$T0" "$T1")
    PR[run]=$(ratio "${PN[run]}" "${P1[run]}")
    check "${sums[1]}"

    # One pull alone, then COPIES at once.
    t0=$(now)
    pull "${sums[1]}"
    t1=$(now)
    L1[run]=$(mbps "$BYTES" "$t0" "$t1")
    at_once pulls
    RL[run]=$PHASE_PEAK SL[run]=$START
    LN[run]=$(mbps $((BYTES * COPIES)) "$T0" "$T1")
    LR[run]=$(ratio "${LN[run]}" "${L1[run]}")

    # COPIES new pushes and COPIES pulls of the first ones, all at once.
    at_once pushes_and_pulls
    RM[run]=$PHASE_PEAK SM[run]=$START
    MX[run]=$(mbps $((2 * BYTES * COPIES)) "$T0" "$T1")
    MR[run]=$(ratio "${MX[run]}" "$(one_after_other "${P1[run]}" "${L1[run]}")")
    for m in "${RP[run]}" "${RL[run]}" "${RM[run]}"; do
        ((m > PEAK)) && PEAK=$m
    done
    printf '%-6s %9s %9s %6s %9s %9s %6s %9s %6s %18s %12s\n' "$run" "${P1[run]}" "${PN[run]}" \
        "${PR[run]}" "${L1[run]}" "${LN[run]}" "${LR[run]}" "${MX[run]}" "${MR[run]}" \
        "${RP[run]}/${RL[run]}/${RM[run]}" "${SP[run]}/${SL[run]}/${SM[run]}"
done
printf '%-6s %9s %9s %6s %9s %9s %6s %9s %6s %18s\n' median "$(median "${P1[@]}")" \
    "$(median "${PN[@]}")" "$(median "${PR[@]}")" "$(median "${L1[@]}")" "$(median "${LN[@]}")" \
    "$(median "${LR[@]}")" "$(median "${MX[@]}")" "$(median "${MR[@]}")" \
    "$(median "${RP[@]}")/$(median "${RL[@]}")/$(median "${RM[@]}")"
echo "peak RSS over all phases and runs: $PEAK MiB (MB/s; x: aggregate over one transfer alone, mixed over one push then one pull;" \
    "$COPIES x $MIB MiB, one replica on Garage + Redis, $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg))"

#!/usr/bin/env bash
# Helpers of the benchmark scripts, sourced by them; not run on its own. The caller sets
# WORK (scratch directory) and BIN (the vmreg binary) and owns the traps.
#
#   bench_start_server NAME=VALUE… -- SERVE-ARGS…   starts `vmreg serve` on a free loopback
#                                    port with that environment; sets SERVER_PID and URL
#   bench_stop_server                stops it
#   bench_write_vm LIB UUID MIB…      writes VM `bench` into library LIB: one layer of
#                                    random bytes per MIB (the first is the hard drive)
#                                    and an nvram; prints the layer files' names
#   now, mbps BYTES T0 T1, median N…  timing and arithmetic

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

now() { date +%s.%N; }

# MB/s (10^6 bytes per second) of $1 bytes moved between times $2 and $3.
mbps() { python3 -c "import sys; b,t0,t1=map(float,sys.argv[1:]); print(f'{b/(t1-t0)/1e6:.1f}')" "$1" "$2" "$3"; }

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

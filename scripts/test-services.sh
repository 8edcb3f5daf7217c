#!/usr/bin/env bash
# Real Redis and a real S3 (Garage) for the test suite, on free loopback ports with
# throwaway data directories.
#
# Interface
#   source scripts/test-services.sh     defines the functions below, starts nothing:
#     vmreg_services_install            installs redis-server, redis-sentinel (apt) and garage (cargo) if missing
#     vmreg_services_start              installs if needed, starts both, configures Garage
#                                       (single-node layout, key, bucket) and exports:
#                                         VMREG_TEST_REDIS_URL      redis://127.0.0.1:PORT
#                                         VMREG_TEST_REDIS_SERVER   path of redis-server (tests start their own)
#                                         VMREG_TEST_REDIS_SENTINEL path of redis-sentinel (tests/sentinel.rs
#                                                                   starts a primary, a replica, 3 sentinels)
#                                         VMREG_TEST_S3_ENDPOINT    http://127.0.0.1:PORT
#                                         VMREG_TEST_S3_BUCKET      the bucket
#                                         VMREG_TEST_S3_REGION      Garage's s3_region ("garage")
#                                         AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
#                                       returns non-zero (after cleaning up) if anything fails
#     vmreg_services_stop               stops both and deletes their data; safe to call twice
#   The caller owns the shell's traps: `trap vmreg_services_stop EXIT` after sourcing.
#
#   bash scripts/test-services.sh CMD [ARGS…]
#                                       starts the services, runs CMD with the variables
#                                       above, stops them, and exits with CMD's status.
#   bash scripts/test-services.sh       (no command) starts them, prints the exports, and
#                                       waits until interrupted.
#
# Tunables (environment): GARAGE_VERSION (default 2.5.0), VMREG_SERVICES_DIR (parent of the
# throwaway directory, default $TMPDIR or /tmp), VMREG_SERVICES_QUIET=1 to hide progress.

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"

_vmreg_say() {
    [ "${VMREG_SERVICES_QUIET:-0}" = 1 ] || echo "test-services: $*" >&2
}

# A free TCP port on the loopback interface.
_vmreg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return 0
    # Without python: try random high ports until one refuses a connection.
    local port
    for _ in $(seq 1 100); do
        port=$(( (RANDOM % 20000) + 30000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# Waits until something accepts connections on 127.0.0.1:$1, for at most $2 seconds.
_vmreg_wait_port() {
    local port=$1 deadline=$(( SECONDS + ${2:-30} ))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

_vmreg_garage_bin() {
    if command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        echo "$HOME/.cargo/bin/garage"
    else
        return 1
    fi
}

vmreg_services_install() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    if [ "${#missing[@]}" -gt 0 ]; then
        _vmreg_say "installing ${missing[*]} (apt)"
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        if ! { $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2; }; then
            echo "test-services: cannot install ${missing[*]}" >&2
            return 1
        fi
    fi
    local garage
    if garage=$(_vmreg_garage_bin); then
        local have
        have=$("$garage" --version 2>/dev/null | head -n1)
        case "$have" in
            *"$GARAGE_VERSION"*) ;;
            *) _vmreg_say "using $garage ($have); the pinned version is $GARAGE_VERSION" ;;
        esac
    else
        # Built from crates.io: no prebuilt binary can be fetched on every machine. LMDB only
        # keeps the build to what the tests need; bundled-libs (libsodium, zstd built from
        # source) because garage refuses to build with neither it nor system-libs.
        _vmreg_say "installing garage $GARAGE_VERSION with cargo (takes a while, once)"
        cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features --features lmdb,bundled-libs >&2 || {
            echo "test-services: cannot install garage $GARAGE_VERSION" >&2
            return 1
        }
    fi
}

vmreg_services_stop() {
    if [ -n "${_VMREG_GARAGE_PID:-}" ]; then
        kill "$_VMREG_GARAGE_PID" 2>/dev/null || true
        wait "$_VMREG_GARAGE_PID" 2>/dev/null || true
        _VMREG_GARAGE_PID=""
    fi
    if [ -n "${_VMREG_REDIS_PID:-}" ]; then
        kill "$_VMREG_REDIS_PID" 2>/dev/null || true
        wait "$_VMREG_REDIS_PID" 2>/dev/null || true
        _VMREG_REDIS_PID=""
    fi
    if [ -n "${_VMREG_SERVICES_DIR:-}" ] && [ -d "$_VMREG_SERVICES_DIR" ]; then
        rm -rf "$_VMREG_SERVICES_DIR"
        _VMREG_SERVICES_DIR=""
    fi
}

vmreg_services_start() {
    vmreg_services_install || return 1
    local garage
    garage=$(_vmreg_garage_bin) || {
        echo "test-services: garage is not installed" >&2
        return 1
    }
    _VMREG_SERVICES_DIR=$(mktemp -d "${VMREG_SERVICES_DIR:-${TMPDIR:-/tmp}}/vmreg-services.XXXXXX") || return 1
    local dir=$_VMREG_SERVICES_DIR

    # Redis: no persistence, it is a throwaway.
    local redis_port
    redis_port=$(_vmreg_free_port) || { vmreg_services_stop; return 1; }
    mkdir -p "$dir/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --save "" --appendonly no \
        --protected-mode no >"$dir/redis.log" 2>&1 &
    _VMREG_REDIS_PID=$!
    if ! _vmreg_wait_port "$redis_port" 20; then
        echo "test-services: redis-server did not start:" >&2
        tail -n 20 "$dir/redis.log" >&2
        vmreg_services_stop
        return 1
    fi

    # Garage: one node holding the whole layout.
    local s3_port rpc_port admin_port secret
    if ! { s3_port=$(_vmreg_free_port) && rpc_port=$(_vmreg_free_port) && admin_port=$(_vmreg_free_port); }; then
        vmreg_services_stop
        return 1
    fi
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    mkdir -p "$dir/garage/meta" "$dir/garage/data"
    local conf="$dir/garage/garage.toml"
    cat >"$conf" <<EOF
metadata_dir = "$dir/garage/meta"
data_dir = "$dir/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    _VMREG_GARAGE_CONF=$conf
    "$garage" -c "$conf" server >"$dir/garage.log" 2>&1 &
    _VMREG_GARAGE_PID=$!
    local deadline=$(( SECONDS + 60 ))
    until "$garage" -c "$conf" status >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$_VMREG_GARAGE_PID" 2>/dev/null; then
            echo "test-services: garage did not start:" >&2
            tail -n 20 "$dir/garage.log" >&2
            vmreg_services_stop
            return 1
        fi
        sleep 0.3
    done
    local node key_out key_id key_secret bucket=vmreg-test
    node=$("$garage" -c "$conf" node id -q 2>/dev/null | cut -d@ -f1)
    {
        [ -n "$node" ] &&
            "$garage" -c "$conf" layout assign -z dc1 -c 10GB "$node" >/dev/null &&
            "$garage" -c "$conf" layout apply --version 1 >/dev/null &&
            key_out=$("$garage" -c "$conf" key create vmreg-test) &&
            "$garage" -c "$conf" bucket create "$bucket" >/dev/null &&
            "$garage" -c "$conf" bucket allow --read --write --owner "$bucket" --key vmreg-test >/dev/null
    } 2>"$dir/garage-setup.log" || {
        echo "test-services: configuring garage failed:" >&2
        cat "$dir/garage-setup.log" >&2
        vmreg_services_stop
        return 1
    }
    key_id=$(printf '%s\n' "$key_out" | awk -F': *' '/^Key ID/ {print $2; exit}' | tr -d ' ')
    key_secret=$(printf '%s\n' "$key_out" | awk -F': *' '/^Secret key/ {print $2; exit}' | tr -d ' ')
    if [ -z "$key_id" ] || [ -z "$key_secret" ]; then
        echo "test-services: could not read the key from garage's output:" >&2
        printf '%s\n' "$key_out" >&2
        vmreg_services_stop
        return 1
    fi
    _vmreg_wait_port "$s3_port" 20 || {
        echo "test-services: garage's S3 API is not listening" >&2
        vmreg_services_stop
        return 1
    }

    export VMREG_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
    export VMREG_TEST_REDIS_SERVER
    VMREG_TEST_REDIS_SERVER=$(command -v redis-server)
    export VMREG_TEST_REDIS_SENTINEL
    VMREG_TEST_REDIS_SENTINEL=$(command -v redis-sentinel)
    export VMREG_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    export VMREG_TEST_S3_BUCKET="$bucket"
    export VMREG_TEST_S3_REGION="garage"
    export AWS_ACCESS_KEY_ID="$key_id"
    export AWS_SECRET_ACCESS_KEY="$key_secret"
    export AWS_REGION="garage"
    _vmreg_say "redis at $VMREG_TEST_REDIS_URL, garage S3 at $VMREG_TEST_S3_ENDPOINT (bucket $bucket), data in $dir"
}

# Run directly: start, run the command (or wait), stop.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    trap vmreg_services_stop EXIT
    trap 'exit 130' INT TERM
    vmreg_services_start || exit 1
    if [ "$#" -gt 0 ]; then
        "$@"
        exit $?
    fi
    for v in VMREG_TEST_REDIS_URL VMREG_TEST_REDIS_SERVER VMREG_TEST_REDIS_SENTINEL VMREG_TEST_S3_ENDPOINT VMREG_TEST_S3_BUCKET \
        VMREG_TEST_S3_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    echo "# services running; Ctrl-C stops them" >&2
    while :; do sleep 3600; done
fi

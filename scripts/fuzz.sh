#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document (GET /openapi.json) with schemathesis, for a
# bounded time, against the real binary: on the embedded store, and on S3 (Garage) + Redis
# when the services of scripts/test-services.sh are configured; with authentication off,
# and on when the binary has it: once as root (the root token), once as an API-key session
# (a key made by root, then the TAP handshake a Mac node's client does, in
# scripts/fuzz_session.py), each for half the time of the auth-off run; then, with auth on,
# random non-canonical spellings of every documented path (scripts/fuzz_paths.py) by no
# credential, a bogus token and a key holding only `index`, none of which may get more
# than the canonical path gives it. A 5xx (the fuzz runs with its backends up, so
# not even the documented 503 may appear), a response outside the documented schema,
# status codes, content types or headers, or a server that died, fails the run. Prints the
# requests sent and the failures of each run. A run that schemathesis itself crashes in (its
# "Runtime Error", with no check failed) is shown and made once more; a second crash fails.
#
#   scripts/fuzz.sh                  uses target/debug/vmreg (built when missing)
#   VMREG_FUZZ_SECONDS=40            time budget of each auth-off run, split between
#                                    the root and API-key runs with auth on (default 40)
#   VMREG_BIN=path                   the binary to fuzz
#
# schemathesis comes from PyPI into a virtualenv under target/ when it is not installed.
# Under CI (or VMREG_TEST_BACKEND=s3) missing S3 settings fail the run instead of
# skipping the S3 runs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${VMREG_FUZZ_SECONDS:-40}"
bin="${VMREG_BIN:-target/debug/vmreg}"
if [ ! -x "$bin" ]; then
    cargo build --bin vmreg
fi

st_bin() {
    if command -v st >/dev/null 2>&1 && st --help 2>/dev/null | grep -q 'Property-based API testing'; then
        command -v st
        return
    fi
    local venv=target/fuzz-venv
    if [ ! -x "$venv/bin/st" ]; then
        echo "fuzz: installing schemathesis into $venv" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q 'schemathesis>=4,<5' >&2
    fi
    echo "$venv/bin/st"
}
st=$(st_bin)

work=$(mktemp -d "${TMPDIR:-/tmp}/vmreg-fuzz.XXXXXX")
server_pid=""
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Starts `vmreg serve` with the given flags on a free port; sets server_pid and url.
start_server() {
    local log="$work/server.log"
    "$bin" serve --listen 127.0.0.1:0 "$@" >"$work/stdout" 2>"$log" &
    server_pid=$!
    url=""
    for _ in $(seq 1 150); do
        url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/stdout" | head -1)
        [ -n "$url" ] && return 0
        sleep 0.1
    done
    echo "fuzz: vmreg serve did not start:" >&2
    cat "$log" >&2
    return 1
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

backends=(embedded)
if [ -n "${VMREG_TEST_S3_ENDPOINT:-}" ] && [ -n "${VMREG_TEST_REDIS_URL:-}" ]; then
    backends+=(s3)
elif [ -n "${CI:-}" ] || [ "${VMREG_TEST_BACKEND:-}" = s3 ]; then
    echo "fuzz: the S3 runs need VMREG_TEST_S3_ENDPOINT and VMREG_TEST_REDIS_URL (scripts/test-services.sh)" >&2
    exit 1
else
    echo "fuzz: S3 runs skipped: no VMREG_TEST_S3_ENDPOINT (run through scripts/test-services.sh)" >&2
fi
auth_modes=(off)
if "$bin" serve --help | grep -q -- '--enable-auth'; then
    auth_modes+=(root key paths)
else
    echo "fuzz: auth-on runs skipped: this build has no --enable-auth" >&2
fi

# True when a schemathesis report has no failed check and its only errors are its own
# "Runtime Error"s.
tool_error_only() {
    local errors
    errors=$(sed -n '/^Errors:/,/^$/p' "$1" | grep -c '🚫' || true)
    ! grep -q '^Failures:' "$1" && [ "$errors" -eq 1 ] && grep -q '🚫 Runtime Error' "$1"
}

failed=0
summary=()
for backend in "${backends[@]}"; do
    for auth in "${auth_modes[@]}"; do
        run="$backend-auth-$auth"
        prefix="fuzz$(date +%s%N | tail -c 9)"
        flags=(--data-dir "$work/$run")
        if [ "$backend" = s3 ]; then
            flags+=(--redis-url "$VMREG_TEST_REDIS_URL" --redis-prefix "$prefix:"
                --s3-bucket "$VMREG_TEST_S3_BUCKET" --s3-endpoint "$VMREG_TEST_S3_ENDPOINT"
                --s3-region "${VMREG_TEST_S3_REGION:-garage}" --s3-path-style --s3-prefix "$prefix")
        fi
        st_auth=()
        budget=$seconds
        token="fuzz-root-token-$prefix"
        if [ "$auth" != off ]; then
            flags+=(--enable-auth --root-token "$token" --enable-api-keys --enable-authorization)
            budget=$(( seconds / 2 > 10 ? seconds / 2 : 10 ))
        fi
        start_server "${flags[@]}"
        if [ "$auth" = paths ]; then
            status=0
            python3 scripts/fuzz_paths.py "$url" "$token" "$budget" >"$work/$run.log" 2>&1 || status=$?
            alive=yes
            kill -0 "$server_pid" 2>/dev/null || alive=no
            stop_server
            cat "$work/$run.log"
            if [ "$status" -ne 0 ] || [ "$alive" != yes ]; then
                failed=1
                echo "== fuzz $run: FAILED (exit $status, server alive: $alive); server log:" >&2
                tail -40 "$work/server.log" >&2
            fi
            summary+=("fuzz: backend=$backend auth=on paths: $(tail -n +1 "$work/$run.log" | grep -m1 '^fuzz_paths: seed' || echo 'no summary')")
            continue
        fi
        case "$auth" in
        root) st_auth=(--auth "root:$token") ;;
        key)
            if ! header=$(python3 scripts/fuzz_session.py "$url" "$token" "fuzzer-$prefix" 2>"$work/session.log"); then
                echo "== fuzz $run: FAILED to open an API-key session:" >&2
                cat "$work/session.log" >&2
                tail -20 "$work/server.log" >&2
                stop_server
                failed=1
                summary+=("fuzz: backend=$backend auth=$auth requests=0 failures=(no session)")
                continue
            fi
            st_auth=(--header "Authorization: $header")
            ;;
        esac
        rerun=""
        for attempt in 1 2; do
            status=0
            "$st" run "$url/openapi.json" \
                --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
                --max-time "$budget" --workers 2 --no-color --request-timeout 30 \
                --report har --report-har-path "$work/$run.har" \
                "${st_auth[@]}" >"$work/$run.log" 2>&1 || status=$?
            # schemathesis's own crash (a "Runtime Error": neither a failed check nor a
            # network error) says nothing about vmreg: shown, and the run made once more.
            if [ "$status" -ne 0 ] && [ "$attempt" = 1 ] && tool_error_only "$work/$run.log" \
                && kill -0 "$server_pid" 2>/dev/null; then
                echo "== fuzz $run: schemathesis failed internally, no check failed; running again:" >&2
                sed -n '/= ERRORS =/,/= SUMMARY =/p' "$work/$run.log" >&2
                rerun=" (run again after a schemathesis internal error)"
                continue
            fi
            break
        done
        alive=yes
        kill -0 "$server_pid" 2>/dev/null || alive=no
        stop_server
        requests=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["log"]["entries"]))' "$work/$run.har" 2>/dev/null || echo 0)
        failures=$(sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p' "$work/$run.log" | tail -1)
        failures=${failures:-0}
        if [ "$status" -ne 0 ] || [ "$alive" != yes ] || [ "$requests" -eq 0 ]; then
            failed=1
            [ "$failures" -gt 0 ] || failures="(schemathesis exit $status, server alive: $alive)"
            echo "== fuzz $run: FAILED; schemathesis said:" >&2
            sed -n '/= \(FAILURES\|ERRORS\) =/,/= SUMMARY =/p' "$work/$run.log" >&2
            tail -30 "$work/$run.log" >&2
            echo "== server log:" >&2
            tail -40 "$work/server.log" >&2
        fi
        line="fuzz: backend=$backend auth=$auth requests=$requests failures=$failures$rerun"
        summary+=("$line")
        echo "$line"
    done
done

echo "== fuzz figures"
printf '%s\n' "${summary[@]}"
exit "$failed"

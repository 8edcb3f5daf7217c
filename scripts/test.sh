#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs and starts what the tests need
# (redis-server, Garage) when missing, runs the unit tests and the black-box suites on the
# embedded default, then the black-box suites again, plus the multi-replica tests, on
# S3 (Garage) + Redis. Stops the services it started.
#
# Every suite runs even when an earlier one fails (cargo's --no-fail-fast, and the S3 pass
# after a failed embedded pass); the script fails at the end, naming what failed. Tests
# that need Redis, S3 or a backend of their own are #[ignore]d for a plain `cargo test`;
# here they run (--include-ignored), and a missing service fails them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup first" >&2
    exit 1
fi

if ! command -v openssl >/dev/null; then
    echo "== installing openssl (the TLS tests make their certificates with it)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl
fi

# The largest tests move a 2 GiB template (the registry's copy plus the client's) while the
# other suites run: say so up front rather than fail later with "No space left on device".
free_kib=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "scripts/test.sh: warning: only $((free_kib / 1024)) MiB free in ${TMPDIR:-/tmp}; the tests need about 8 GiB" >&2
fi

# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh
trap vmreg_services_stop EXIT
vmreg_services_start

# oras-py, a real OCI client for tests/oci_clients.rs, in a virtualenv under target/.
oras_venv=target/oras-venv
if ! "$oras_venv/bin/python" -c 'import oras' 2>/dev/null; then
    echo "== installing oras (PyPI) into $oras_venv"
    python3 -m venv "$oras_venv" && "$oras_venv/bin/pip" install -q 'oras==0.2.43' ||
        echo "scripts/test.sh: could not install oras; tests/oci_clients.rs will fail" >&2
fi
export VMREG_TEST_ORAS_PYTHON="$PWD/$oras_venv/bin/python"

# skopeo (Debian), a real OCI client for tests/oci_clients.rs.
if ! command -v skopeo >/dev/null; then
    echo "== installing skopeo"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq skopeo; } ||
        echo "scripts/test.sh: could not install skopeo; tests/oci_clients.rs will fail" >&2
fi

# docker-registry (Debian's distribution 2.8), the reference server of tests/oci_differential.rs.
if ! command -v docker-registry >/dev/null; then
    echo "== installing docker-registry"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker-registry; } ||
        echo "scripts/test.sh: could not install docker-registry; tests/oci_differential.rs will fail" >&2
fi

failed=()
# Runs one pass; a failure is recorded, not fatal, so the passes after it still run.
pass() {
    local title=$1
    shift
    echo "== $title"
    if ! "$@"; then
        failed+=("$title")
    fi
}

# The lifecycle suite's lease test needs two replicas on one store, which the embedded
# store (one process per database) cannot have, and the limits suite's read-memory test
# measures the S3 store's download budget, and the OCI redirect test needs presigned S3
# URLs, and the heal suite's S3 cases need an S3 server to stop and misconfigure: they
# run in the S3 pass only.
pass "embedded backend (local disk + redb): unit tests and black-box suites" \
    env VMREG_TEST_BACKEND=embedded cargo test --no-fail-fast --lib --bins --test server --test client --test golden --test auth --test operations --test limits --test hostile --test tls --test oci --test oci_auth --test oci_clients --test oci_differential --test lifecycle --test retention --test heal --test identities -- --include-ignored \
    --skip periodic_gc_runs_on_one_replica_at_a_time_and_moves_when_it_dies \
    --skip concurrent_pulls_of_different_files_stay_within_the_read_memory \
    --skip blob_gets_redirect_to_presigned_s3_urls_with_s3_redirect \
    --skip a_bucket_that_does_not_exist_is_a_configuration_error \
    --skip s3_refusing_the_credentials_is_a_configuration_error \
    --skip started_before_s3_it_waits_and_serves_once_s3_is_up

pass "S3 (Garage) + Redis backend: black-box suites and multi-replica tests" \
    env VMREG_TEST_BACKEND=s3 cargo test --no-fail-fast --test server --test client --test golden --test auth --test replicas --test sentinel --test crash --test operations --test traces --test limits --test hostile --test oci --test oci_auth --test oci_clients --test oci_differential --test lifecycle --test retention --test heal --test identities -- --include-ignored

pass "the README's five-minute tour, run as written" \
    bash scripts/readme-tour.sh target/debug/vmreg

pass "operations: a real Prometheus scrapes vmreg" \
    bash scripts/check-prometheus.sh target/debug/vmreg

pass "deploy files: chart rendered and validated, hadolint, shellcheck, promtool, compose, terraform" \
    bash scripts/check-deploy.sh

pass "fuzzing from the OpenAPI document (schemathesis), both backends, auth off, root and API-key session" \
    bash scripts/fuzz.sh

if [ "${#failed[@]}" -gt 0 ]; then
    echo "scripts/test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "scripts/test.sh: all passes succeeded"

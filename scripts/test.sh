#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs and starts what the tests need
# (redis-server, Garage) when missing, runs the unit tests and the black-box suites on the
# embedded default, then the black-box suites again, plus the multi-replica tests, on
# S3 (Garage) + Redis. Stops the services it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup first" >&2
    exit 1
fi

# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh
trap vmreg_services_stop EXIT
vmreg_services_start

echo "== embedded backend (local disk + redb): unit tests and black-box suites"
VMREG_TEST_BACKEND=embedded cargo test --lib --bins --test server --test client

echo "== S3 (Garage) + Redis backend: black-box suites and multi-replica tests"
VMREG_TEST_BACKEND=s3 cargo test --test server --test client --test replicas

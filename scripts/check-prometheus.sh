#!/usr/bin/env bash
# A real Prometheus (Debian's package, installed when missing) scrapes a running vmreg on
# its main listener and on the separate metrics listener; passes when both targets are up
# and the expected series are stored. Bounded: gives up after 60 s.
#
# Usage: scripts/check-prometheus.sh [path/to/vmreg]   (default: target/debug/vmreg)
set -euo pipefail
cd "$(dirname "$0")/.."
vmreg=${1:-target/debug/vmreg}
[ -x "$vmreg" ] || cargo build --bin vmreg
if ! command -v prometheus >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

app_port=$(free_port)
metrics_port=$(free_port)
prom_port=$(free_port)
"$vmreg" serve --listen "127.0.0.1:$app_port" --data-dir "$work/data" \
    --enable-metrics --metrics-listen "127.0.0.1:$metrics_port" >"$work/vmreg.out" 2>"$work/vmreg.log" &
pids+=($!)

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/helm/vmreg/files/alerts.yaml
scrape_configs:
  - job_name: vmreg
    static_configs:
      - targets: ["127.0.0.1:$app_port"]
  - job_name: vmreg-metrics-listener
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

query() {
    curl -fsS --max-time 5 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" 2>/dev/null || true
}
# Results of a query that holds: a non-empty vector.
holds() {
    query "$1" | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r else 1)' 2>/dev/null
}

wanted=(
    'up{job="vmreg"} == 1'
    'up{job="vmreg-metrics-listener"} == 1'
    'vmreg_build_info == 1'
    'vmreg_http_requests_total{route="/registry/status",status="200"} >= 1'
    'vmreg_http_request_duration_seconds_bucket{route="/registry/status",le="+Inf"} >= 1'
    'vmreg_transferred_bytes_total{direction="push"}'
    'vmreg_transfers_in_flight'
    'vmreg_store_operation_duration_seconds_count{store="redb"}'
    'vmreg_inventory{item="templates"}'
    'vmreg_part_buffer_bytes{state="in_use"}'
)
deadline=$((SECONDS + 60))
pending=("${wanted[@]}")
while [ ${#pending[@]} -gt 0 ]; do
    if [ $SECONDS -ge $deadline ]; then
        echo "FAIL: after 60 s Prometheus still lacks: ${pending[*]}" >&2
        tail -5 "$work/prometheus.log" "$work/vmreg.log" >&2
        exit 1
    fi
    curl -fsS --max-time 5 "http://127.0.0.1:$app_port/registry/status" >/dev/null 2>&1 || true
    curl -fsS --max-time 5 "http://127.0.0.1:$app_port/readyz" >/dev/null 2>&1 || true
    still=()
    for q in "${pending[@]}"; do
        holds "$q" || still+=("$q")
    done
    pending=("${still[@]+"${still[@]}"}")
    sleep 1
done
echo "Prometheus scraped vmreg: both targets up, ${#wanted[@]} expected series stored"

#!/usr/bin/env bash
# Runs the README's five-minute tour as it is written: the shell block after the
# `<!-- tour -->` marker is extracted (not copied), its registry port replaced by a free
# one, and run line by line under `set -e` in an empty directory with an empty HOME,
# against a fresh `vmreg serve` on the embedded store. Fails when a command fails or the
# block is gone, so the tour cannot rot.
#
# Usage: scripts/readme-tour.sh [path/to/vmreg]   (default: target/debug/vmreg, built when
# missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/debug/vmreg}
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --bin vmreg)
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

tour=$(awk '
    /<!-- tour -->/ { marked = 1; next }
    marked && /^```sh/ { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }
' "$root/README.md")
if [ -z "$tour" ]; then
    echo "readme-tour: no shell block after <!-- tour --> in README.md" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmreg-tour.XXXXXX")
server=""
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin" "$work/home" "$work/run"
ln -s "$bin" "$work/bin/vmreg"
export PATH="$work/bin:$PATH" HOME="$work/home"
unset VMREG_LIB VMREG_ROOT_TOKEN VMREG_API_KEY_ID VMREG_API_KEY_FILE

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$work/run" && exec vmreg serve --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1) &
server=$!
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
if ! curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null; then
    echo "readme-tour: the server did not become ready; its log:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi

echo "== the README's tour, against 127.0.0.1:$port"
cd "$work/run"
# -x shows each command as the reader would type it.
if ! bash -euxo pipefail -c "${tour//127.0.0.1:8089/127.0.0.1:$port}"; then
    echo "readme-tour: FAILED; the server's log:" >&2
    tail -n 20 "$work/serve.log" >&2
    exit 1
fi
echo "readme-tour: every command of the tour succeeded"

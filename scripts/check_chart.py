#!/usr/bin/env python3
"""Renders helm/vmreg with Helm's own engine (helm-python-sdk binds Helm's Go SDK; no
cluster needed), asserts what the chart promises, and writes the manifests of each values
set to OUT_DIR/<set>/ for kubernetes-validate.

Rendering passes .Capabilities the way a cluster would (the API versions it serves),
so the objects that need CRDs are checked both where the CRDs exist and where they do not.
The rendered HTTPRoutes are written to OUT_DIR/httproutes.json for the Gateway API schema
check (scripts/check_httproute.mjs).

Usage: check_chart.py CHART OUT_DIR
"""

import json
import os
import re
import sys

import helm_python as helm
from helm_python import _native
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
    "httpRoute": {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
        "hostnames": ["registry.example.com"],
    },
    "service": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}},
    "podLabels": {"team": "mac-ci"},
    "priorityClassName": "registry-critical",
    "extraVolumes": [{"name": "s3-ca", "configMap": {"name": "s3-ca"}}],
    "extraVolumeMounts": [{"name": "s3-ca", "mountPath": "/etc/ssl/certs/s3-ca.pem", "subPath": "ca.pem", "readOnly": True}],
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
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


# What a cluster with the Prometheus Operator serves (helm install reads it from the API
# server; helm template takes it from --api-versions).
MONITORING = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]


def render(chart, values, api_versions=()):
    """Helm's engine, as `helm install --dry-run` on a cluster serving api_versions."""
    opts = {"name": "vmreg", "namespace": "registry", "is_install": True, "api_versions": list(api_versions)}
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))


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


def matches(selector, labels):
    """Whether a label selector (matchLabels form, or a Service's plain map) selects labels."""
    wanted = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


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
    refused(chart, {**MINIMAL, "image": {**IMAGE, "digest": "latest"}}, "schema", "an image.digest that is no sha256 digest")
    refused(chart, {**MINIMAL, "httpRoute": {"enabled": True}}, "httpRoute.parentRefs is required", "an HTTPRoute without a Gateway")
    refused(
        chart,
        {**MINIMAL, "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "timeouts": {"request": "1 hour"}}},
        "schema",
        "an HTTPRoute timeout that is no Gateway API duration",
    )

    # Lint as `helm lint --strict` does, for the oldest and newest Kubernetes validated below.
    for kube in ["v1.29.0", "v1.37.0"]:
        report = helm.lint(CHART, MINIMAL, strict=True, namespace="registry", kube_version=kube)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        check(not problems, f"helm lint --strict (Kubernetes {kube}): {problems or 'clean'}")

    minimal = render(chart, MINIMAL)
    full = render(chart, FULL, MONITORING)
    full_without_crds = render(chart, FULL)
    save("minimal", minimal)
    save("full", full)
    docs_min, docs_full = objects(minimal), objects(full)

    kinds_min = sorted({d["kind"] for d in docs_min})
    check(
        kinds_min == ["Deployment", "Pod", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"],
        f"minimal values render {kinds_min}",
    )
    kinds_full = {d["kind"] for d in docs_full}
    for kind in ["HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "Ingress", "HTTPRoute"]:
        check(kind in kinds_full, f"full values render a {kind}")

    # The Prometheus Operator's kinds only where its CRDs exist; NOTES say why they are missing.
    kinds_bare = {d["kind"] for d in objects(full_without_crds)}
    check(
        not kinds_bare & {"ServiceMonitor", "PrometheusRule"} and kinds_full - kinds_bare == {"ServiceMonitor", "PrometheusRule"},
        f"without the monitoring CRDs no ServiceMonitor or PrometheusRule renders (rendered: {sorted(kinds_bare)})",
    )
    notes_bare = full_without_crds["vmreg/templates/NOTES.txt"]
    check(
        "no\nmonitoring.coreos.com/v1 ServiceMonitor kind" in notes_bare
        and "PrometheusRule kind" in notes_bare
        and "WARNING" not in full["vmreg/templates/NOTES.txt"],
        "NOTES warn when monitoring is enabled but its CRDs are missing, and only then",
    )
    for kind in ["ServiceMonitor", "PrometheusRule"]:
        obj = by_kind(docs_full, kind)[0]
        check(obj["metadata"]["labels"].get("release") == "kps", f"the {kind} carries extra labels (release: kps)")

    for name, docs in [("minimal", docs_min), ("full", docs_full)]:
        dep = by_kind(docs, "Deployment")[0]
        restricted(dep["spec"]["template"]["spec"], f"{name} Deployment")
        test_pod = by_kind(docs, "Pod")[0]
        restricted(test_pod["spec"], f"{name} helm test pod")
        check(
            dep["spec"]["template"]["spec"].get("automountServiceAccountToken") is False
            and test_pod["spec"].get("automountServiceAccountToken") is False
            and all(sa.get("automountServiceAccountToken") is False for sa in by_kind(docs, "ServiceAccount")),
            f"{name}: no service-account token is mounted (pods and ServiceAccount)",
        )
        # Nothing selects the test pod: no Service routes to it, no budget or policy counts it.
        test_labels = test_pod["metadata"]["labels"]
        selectors = [("Service", d["spec"]["selector"]) for d in by_kind(docs, "Service")]
        selectors += [("Deployment", dep["spec"]["selector"])]
        selectors += [("PodDisruptionBudget", d["spec"]["selector"]) for d in by_kind(docs, "PodDisruptionBudget")]
        selectors += [("NetworkPolicy", d["spec"]["podSelector"]) for d in by_kind(docs, "NetworkPolicy")]
        selectors += [("ServiceMonitor", d["spec"]["selector"]) for d in by_kind(docs, "ServiceMonitor")]
        selectors += [
            ("topologySpread", t["labelSelector"]) for t in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        ]
        chosen = [kind for kind, sel in selectors if matches(sel, test_labels)]
        check(not chosen, f"{name}: the helm test pod is selected by nothing (selected by: {chosen})")
        check(
            all(matches(sel, dep["spec"]["template"]["metadata"]["labels"]) for kind, sel in selectors if kind != "ServiceMonitor"),
            f"{name}: every selector still selects the vmreg pods",
        )
        check(test_pod["spec"].get("imagePullSecrets") == dep["spec"]["template"]["spec"].get("imagePullSecrets"), f"{name}: the test pod pulls with the same imagePullSecrets")
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
    check(pod_min["terminationGracePeriodSeconds"] == 600 + 5 + 5, "grace period = 10m shutdown (the default) + 5s preStop + 5s")
    env_default = {e["name"]: e.get("value") for e in c_min["env"]}
    check(env_default.get("VMREG_SHUTDOWN_TIMEOUT") == "10m", "multi-GB transfers get 10 minutes to finish on shutdown by default")
    hour = render(chart, {**MINIMAL, "shutdownTimeout": "1h"})
    check(
        by_kind(objects(hour), "Deployment")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3600 + 10,
        "shutdownTimeout 1h: grace period 3610 s",
    )
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

    # PodDisruptionBudget: by the replicas that run, the HPA's floor when it is on.
    def pdbs(values):
        return by_kind(objects(render(chart, values)), "PodDisruptionBudget")

    check(
        len(pdbs({**MINIMAL, "replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 2}})) == 1,
        "a PDB with replicaCount 1 and the HPA on (minReplicas 2)",
    )
    check(not pdbs({**MINIMAL, "replicaCount": 1}), "no PDB for one replica without the HPA (it would block drains)")
    check(
        not pdbs({**MINIMAL, "replicaCount": 3, "autoscaling": {"enabled": True, "minReplicas": 1}}),
        "no PDB when the HPA may scale to one replica",
    )

    # The values operators routinely need reach the objects.
    c_full = pod_full["containers"][0]
    service_full = by_kind(docs_full, "Service")[0]
    check(
        service_full["metadata"].get("annotations") == FULL["service"]["annotations"],
        "service.annotations annotate the Service",
    )
    labels_full = spec_full["template"]["metadata"]["labels"]
    check(labels_full.get("team") == "mac-ci" and matches(spec_full["selector"], labels_full), "podLabels label the pods, beside the selector labels")
    squatted = render(chart, {**MINIMAL, "podLabels": {"app.kubernetes.io/name": "other"}})
    dep_sq = by_kind(objects(squatted), "Deployment")[0]["spec"]
    check(matches(dep_sq["selector"], dep_sq["template"]["metadata"]["labels"]), "podLabels cannot override the selector labels")
    check(pod_full.get("priorityClassName") == "registry-critical", "priorityClassName reaches the pod spec")
    check(
        {"name": "s3-ca", "configMap": {"name": "s3-ca"}} in pod_full["volumes"]
        and any(m["name"] == "s3-ca" and m["mountPath"] == "/etc/ssl/certs/s3-ca.pem" for m in c_full["volumeMounts"]),
        "extraVolumes and extraVolumeMounts reach the pod",
    )
    check(spec_min["template"]["metadata"]["annotations"].keys() == {"checksum/secret"}, "no podAnnotations by default")
    annotated = render(chart, {**MINIMAL, "podAnnotations": {"example.com/owner": "ci"}})
    check(
        by_kind(objects(annotated), "Deployment")[0]["spec"]["template"]["metadata"]["annotations"].get("example.com/owner") == "ci",
        "podAnnotations annotate the pods",
    )
    digest = "sha256:" + "ab" * 32
    pinned = render(chart, {**MINIMAL, "image": {**IMAGE, "digest": digest}})
    images = {c["image"] for d in objects(pinned) if d["kind"] in ("Deployment", "Pod") for c in (d["spec"].get("template", {}).get("spec") or d["spec"])["containers"]}
    check(images == {f"registry.example.com/vmreg:0.1.0@{digest}"}, f"image.digest pins the Deployment's and the test pod's image: {images}")
    named = objects(render(chart, {**MINIMAL, "fullnameOverride": "templates", "autoscaling": {"enabled": True}}))
    names = {d["metadata"]["name"] for d in named if d["kind"] not in ("Secret", "Pod")}
    check(names == {"templates"}, f"fullnameOverride names every object: {sorted(names)}")
    svc_url = by_kind(named, "Pod")[0]["spec"]["containers"][0]["args"][1]
    check(svc_url.startswith("http://templates.registry.svc:"), f"the test pod asks the renamed Service ({svc_url})")
    renamed = objects(render(chart, {**MINIMAL, "nameOverride": "anka"}))
    check(by_kind(renamed, "Deployment")[0]["metadata"]["name"] == "vmreg-anka", "nameOverride renames objects (<release>-<name>)")

    # Gateway API: a route to the Service, timeouts off for hours-long transfers.
    route = by_kind(docs_full, "HTTPRoute")[0]
    rule = route["spec"]["rules"][0]
    check(
        route["spec"]["parentRefs"] == FULL["httpRoute"]["parentRefs"]
        and route["spec"]["hostnames"] == ["registry.example.com"]
        and rule["backendRefs"] == [{"name": "vmreg", "port": 8089}]
        and rule["timeouts"] == {"request": "0s", "backendRequest": "0s"},
        "the HTTPRoute sends the Gateway's traffic to the Service, with no request timeout",
    )
    with open(os.path.join(OUT, "httproutes.json"), "w") as f:
        json.dump([route], f)

    # The helm test pod is allowed by the chart's own NetworkPolicy when it restricts peers.
    policy = by_kind(docs_full, "NetworkPolicy")[0]
    test_labels = by_kind(docs_full, "Pod")[0]["metadata"]["labels"]
    http_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == "http" for p in r["ports"])]
    check(
        any("from" not in r or any(set(f) == {"podSelector"} and matches(f["podSelector"], test_labels) for f in r["from"]) for r in http_rules),
        "the NetworkPolicy lets the helm test pod reach the http port",
    )
    check(
        FULL["networkPolicy"]["from"][0] in http_rules[0]["from"],
        "the NetworkPolicy keeps the operator's peers",
    )
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
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    exprs = " ".join(r["expr"] for r in rules)
    check("absent(up" in exprs, "an alert fires when no vmreg target is scraped at all (absent)")
    check("vmreg_s3_read_memory_bytes" in exprs, "an alert watches the download read memory budget")
    with open(os.path.join(CHART, "..", "..", "docs", "alerts.md")) as f:
        anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-")) for line in f if line.startswith("## ")}
    base = "https://github.com/vmreg/vmreg/blob/main/docs/alerts.md#"
    bad = [r["alert"] for r in rules if r["annotations"].get("runbook_url") != base + r["alert"].lower() or r["alert"].lower() not in anchors]
    check(not bad, f"every alert links its section of docs/alerts.md (runbook_url; wrong: {bad})")
    with open(os.path.join(CHART, "files", "alerts_test.yaml")) as f:
        tested = {t["alertname"] for case in yaml.safe_load(f)["tests"] for t in case.get("alert_rule_test", [])}
    check(not {r["alert"] for r in rules} - tested, f"promtool tests every alert (untested: {sorted({r['alert'] for r in rules} - tested)})")
    moved = render(chart, {**FULL, "metrics": {**FULL["metrics"], "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://wiki.example.com/vmreg"}}}, MONITORING)
    urls = {r["annotations"]["runbook_url"] for g in by_kind(objects(moved), "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    check(all(u.startswith("https://wiki.example.com/vmreg#vmreg") for u in urls), "metrics.prometheusRule.runbookBaseUrl moves the runbook links")
    board = json.loads(by_kind(docs_full, "ConfigMap")[0]["data"]["vmreg.json"])
    check(board.get("uid") == "vmreg" and len(board["panels"]) >= 10, "the dashboard ConfigMap holds the dashboard")

    # values.yaml, values.schema.json and the README's table agree: every value has a schema
    # entry and a README row whose default is the one values.yaml sets, and the schema has
    # no value that values.yaml lacks.
    with open(os.path.join(CHART, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(CHART, "values.schema.json")) as f:
        schema = json.load(f)
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.*?) \| .* \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)

    def opaque(key, node):
        """A map whose keys are the operator's (labels, resources…): one row, not one per key."""
        return node is not None and node.get("type") == "object" and "properties" not in node

    def leaves(values, node, prefix=""):
        for k, v in values.items():
            key = f"{prefix}{k}"
            sub = (node or {}).get("properties", {}).get(k)
            if sub is None:
                yield key, v, None
            elif isinstance(v, dict) and v and not opaque(key, sub):
                yield from leaves(v, sub, key + ".")
            else:
                yield key, v, sub

    def schema_leaves(node, prefix=""):
        for k, sub in node.get("properties", {}).items():
            if "properties" in sub:
                yield from schema_leaves(sub, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    def shown(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, (dict, list)):
            return json.dumps(v, separators=(", ", ": "))
        return json.dumps(v) if v == "" else str(v)

    value_leaves = list(leaves(chart.values, schema))
    unschemed = [k for k, _, sub in value_leaves if sub is None]
    check(not unschemed, f"every value has a schema entry (missing: {unschemed})")
    keys = {k for k, _, _ in value_leaves}
    defaultless = [k for k in schema_leaves(schema) if k not in keys and not any(k.startswith(p + ".") for p in keys)]
    check(not defaultless, f"every value the schema accepts has a default in values.yaml (missing: {defaultless})")
    undocumented = [k for k in keys if k not in rows]
    check(not undocumented, f"the chart README lists every value (missing: {undocumented})")
    stale = [k for k in rows if k not in keys]
    check(not stale, f"the chart README lists no value the chart lacks (stale: {stale})")
    wrong = []
    for k, v, _ in value_leaves:
        cell = rows.get(k)
        simple = not isinstance(v, (dict, list)) or not v
        if cell is not None and simple and cell != f"`{shown(v)}`":
            wrong.append(f"{k}: README {cell}, values.yaml `{shown(v)}`")
    check(not wrong, f"the chart README's defaults are values.yaml's (wrong: {wrong})")

if failures:
    print(f"{len(failures)} chart checks failed", file=sys.stderr)
    sys.exit(1)

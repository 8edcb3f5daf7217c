#!/usr/bin/env python3
"""Checks deploy/docker-compose.yml and deploy/nginx.conf as an operator would run them:
healthchecks, images pinned and no older than the fixes they need, ports published on
loopback by default, every credential required from deploy/.env (deploy/.env.example
lists them) and none written in the file, replicas given their shutdown timeout, the
client command of the header, nginx re-resolving the replicas.

Usage: check_compose.py (from the repository root)
"""

import re
import sys

import yaml

text = open("deploy/docker-compose.yml").read()
compose = yaml.safe_load(text)
services = compose["services"]
env_example = dict(
    line.split("=", 1) for line in open("deploy/.env.example").read().splitlines() if line and not line.startswith("#")
)
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


for name, svc in services.items():
    image = svc.get("image", "")
    if "build" not in svc:
        check(re.search(r":[^:/]+$", image) and not image.endswith(":latest"), f"{name}: image {image} is pinned")
    one_shot = any(
        dep.get("condition") == "service_completed_successfully"
        for other in services.values()
        for dep_name, dep in (other.get("depends_on") or {}).items()
        if dep_name == name and isinstance(dep, dict)
    )
    check(one_shot or "healthcheck" in svc, f"{name} has a healthcheck (or is a one-shot job)")

# Published ports default to loopback.
for name, svc in services.items():
    for port in svc.get("ports", []):
        parts = str(port).rsplit(":", 2)
        host = parts[0] if len(parts) == 3 else ""
        default = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", host)
        address = env_example.get(default.group(1), default.group(2)) if default else host
        check(address == "127.0.0.1", f"{name} publishes {port} on 127.0.0.1 by default")

# No credential is written in the file: each comes from .env and is required (${VAR:?}).
secret = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER|MC_HOST_")
for name, svc in services.items():
    for key, value in (svc.get("environment") or {}).items():
        if secret.search(key):
            refs = re.findall(r"\$\{(\w+):\?[^}]*\}", str(value))
            check(refs and all(r in env_example for r in refs), f"{name}: {key} is required from .env ({refs})")
check("minioadmin" not in text, "MinIO's default credentials appear nowhere")
check(any(line.strip() == "/deploy/.env" for line in open(".gitignore")), "git ignores deploy/.env")


# Images no older than the fixes they need.
def version(image):
    return tuple(int(x) for x in re.findall(r"\d+", image.split(":")[1].split("-")[0])[:3])


minimum = {"redis": ((7, 4, 6), "CVE-2025-49844"), "nginx": ((1, 27, 3), "upstream `resolve`")}
for name, svc in services.items():
    repo = svc.get("image", "").split(":")[0].split("/")[-1]
    if repo in minimum:
        floor, why = minimum[repo]
        check(version(svc["image"]) >= floor, f"{name}: {svc['image']} is at least {'.'.join(map(str, floor))} ({why})")


# Transfers in flight get their shutdown timeout before compose kills a replica.
def seconds(duration):
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", str(duration)))


for name, svc in services.items():
    if name.startswith("vmreg"):
        timeout = (svc.get("environment") or {}).get("VMREG_SHUTDOWN_TIMEOUT", "10s")
        grace = svc.get("stop_grace_period", "10s")
        check(
            seconds(timeout) >= 300 and seconds(grace) > seconds(timeout),
            f"{name}: {timeout} for transfers in flight, stop_grace_period {grace} beyond it",
        )

header = [line for line in text.splitlines() if line.startswith("#")]
check(any("vmreg registry -a http://localhost:8089" in line for line in header), "the header shows the -a client command")
check(not any("--registry " in line for line in header), "the header uses no flag the client lacks")
nginx = open("deploy/nginx.conf").read()
check(" resolve " in nginx and "resolver " in nginx, "nginx re-resolves the replicas")
check("http_503" not in nginx, "a 503 does not mark replicas down")

if failures:
    print(f"{len(failures)} compose checks failed", file=sys.stderr)
    sys.exit(1)

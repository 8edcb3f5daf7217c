#!/usr/bin/env python3
"""Checks deploy/Dockerfile beyond hadolint: bases pinned by tag and digest, one release
profile for the dependency layer and the final build (else the cached layer is never
reused), non-root uid/gid 10001, `vmreg healthcheck` as HEALTHCHECK, OCI labels.

Usage: check_dockerfile.py [DOCKERFILE]
"""

import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "deploy/Dockerfile"
text = open(path).read()
lines = re.sub(r"\\\n\s*", " ", text).splitlines()
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
unpinned = [f for f in froms if not re.search(r":[^@/]+@sha256:[0-9a-f]{64}$", f)]
check(froms and not unpinned, f"every base is pinned by tag and digest (not: {unpinned})")

builds = [i for i, line in enumerate(lines) if "cargo build" in line]
inline = [line.strip() for line in lines if "cargo build" in line and "CARGO_PROFILE_" in line]
profile_env = [i for i, line in enumerate(lines) if line.startswith("ENV ") and "CARGO_PROFILE_" in line]
check(len(builds) == 2, f"a dependency build and a final build ({len(builds)} cargo builds)")
check(
    not inline and profile_env and builds and profile_env[0] < builds[0],
    "the release profile is set once (ENV) before the dependency build, never on one build's command line",
)
check(any(line.startswith("USER 10001:10001") for line in lines), "runs as uid/gid 10001")
check("groupadd --system --gid 10001" in text, "creates the vmreg group 10001")
check(
    any(line.startswith("HEALTHCHECK") for line in lines) and 'CMD ["/usr/local/bin/vmreg", "healthcheck"]' in text,
    "HEALTHCHECK runs `vmreg healthcheck`",
)
labels = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", text))
wanted = {f"org.opencontainers.image.{k}" for k in ["title", "description", "licenses", "version", "revision", "created", "source"]}
check(wanted <= labels, f"OCI labels (missing: {sorted(wanted - labels)})")

if failures:
    print(f"{len(failures)} Dockerfile checks failed", file=sys.stderr)
    sys.exit(1)

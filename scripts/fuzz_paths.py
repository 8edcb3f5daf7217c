#!/usr/bin/env python3
"""Fuzzes the spellings of every documented path, for scripts/fuzz.sh.

The server runs with authentication, API keys and authorization on. Every operation of the
OpenAPI document is sent in its canonical spelling and then in random non-canonical ones
(characters percent-encoded in either case, escaped, doubled or added slashes, dot
segments, double escapes, case changes, `;` parameters), by three callers: no credential, a
bogus Bearer token, and the session of an API key whose only permission is `index`, the
weakest a key can hold. A spelling must never get more than its canonical path: where the
canonical answer is a refusal (401 or 403), every spelling is refused with a 4xx too (and
a 401 stays a 401 or a 404: an unauthenticated caller never reaches a permission check);
no spelling gets a 5xx. Requests go out as raw HTTP/1.1, so nothing normalises them.

    scripts/fuzz_paths.py URL ROOT_TOKEN SECONDS [SEED]

Prints the requests sent and every breach; exits 1 on a breach.
"""

import http.client
import json
import random
import sys
import time
import urllib.parse

from fuzz_session import call, open_session

SAMPLES = {
    "name": "fuzz/repo",
    "reference": "latest",
    "digest": "sha256:" + "0" * 64,
    "session": "00000000-0000-0000-0000-000000000000",
    "id": "00000000-0000-0000-0000-000000000000",
    "key": "sha256:" + "0" * 64,
    "template": "fuzz-template",
    "group": "fuzz-group",
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def operations(spec):
    """Every (method, path) of the document, its parameters filled with sample values."""
    for template, item in spec["paths"].items():
        path = template
        for name, value in SAMPLES.items():
            path = path.replace("{" + name + "}", value)
        if "{" in path:
            sys.exit(f"fuzz_paths: no sample value for a parameter of {template}")
        for method in item:
            if method.upper() in METHODS:
                yield method.upper(), path


def escape(ch, upper):
    """`ch` percent-encoded, its hex digits in upper or lower case."""
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in ch.encode())


def mutate(path, rng):
    """One random non-canonical spelling of `path`: one to three edits in a row."""
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(11)
        if edit == 0:  # some characters percent-encoded
            path = "".join(
                escape(c, rng.random() < 0.5) if c != "/" and c != "%" and rng.random() < 0.4 else c
                for c in path)
        elif edit == 1:  # one slash (not the first) escaped
            at = [i for i, c in enumerate(path) if c == "/" and i > 0]
            if at:
                i = rng.choice(at)
                path = path[:i] + rng.choice(["%2F", "%2f"]) + path[i + 1:]
        elif edit == 2:  # one slash doubled
            at = [i for i, c in enumerate(path) if c == "/"]
            i = rng.choice(at)
            path = path[:i] + "/" + path[i:]
        elif edit == 3:  # trailing slash added or dropped
            path = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
        elif edit == 4:  # a dot segment, plain or escaped
            at = [i for i, c in enumerate(path) if c == "/"]
            i = rng.choice(at)
            path = path[:i] + rng.choice(["/.", "/%2e", "/%2E", "/x/..", "/x/%2e%2e"]) + path[i:]
        elif edit == 5:  # one segment upper-cased
            parts = path.split("/")
            i = rng.randrange(len(parts))
            parts[i] = parts[i].upper()
            path = "/".join(parts)
        elif edit == 6:  # a character escaped twice
            at = [i for i, c in enumerate(path) if c.isalnum()]
            if at:
                i = rng.choice(at)
                path = path[:i] + "%25" + f"{ord(path[i]):02x}" + path[i + 1:]
        elif edit == 7:  # a matrix parameter on a segment
            at = [i for i, c in enumerate(path) if c == "/" and i > 0] + [len(path)]
            i = rng.choice(at)
            path = path[:i] + ";x=1" + path[i:]
        elif edit == 8:  # a leading double slash
            path = "/" + path
        elif edit == 9:  # a backslash for a slash
            at = [i for i, c in enumerate(path) if c == "/" and i > 0]
            if at:
                i = rng.choice(at)
                path = path[:i] + rng.choice(["\\", "%5C"]) + path[i + 1:]
        else:  # `+` and spaces in their escaped forms
            path = path.replace("+", "%2B") + rng.choice(["", "%20", "+"])
    return path


def send(base, method, target, authorization):
    """Sends one raw request; answers its status (0 when the connection failed)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        if authorization:
            conn.putheader("Authorization", authorization)
        body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def allowed(canonical, got):
    """True when a spelling answered `got` where its canonical path answered `canonical`."""
    if got == canonical:
        return True
    if got == 0 or got >= 500:
        return False
    if canonical == 401:
        return got in (401, 404)
    if canonical == 403:
        return 400 <= got < 500
    return True


def main():
    base, root, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else random.randrange(1 << 32)
    rng = random.Random(seed)
    spec = json.loads(call(base + "/openapi.json", "GET", None, root))
    weak = open_session(base, root, f"fuzz-weak-{seed}", ["index"])
    callers = {"none": None, "bogus": "Bearer bm90LWEtc2Vzc2lvbg==", "index-key": f"Bearer {weak}"}
    ops = list(operations(spec))
    canonical = {}
    for method, path in ops:
        for who, auth in callers.items():
            status = send(base, method, path, auth)
            canonical[(method, path, who)] = status
    sent, breaches = len(canonical), []
    refused = sum(1 for s in canonical.values() if s in (401, 403))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        method, path = rng.choice(ops)
        target = mutate(path, rng)
        for who, auth in callers.items():
            want = canonical[(method, path, who)]
            got = send(base, method, target, auth)
            sent += 1
            if not allowed(want, got):
                breaches.append(f"{who}: {method} {target} answered {got}; {path} answered {want}")
    print(f"fuzz_paths: seed={seed} operations={len(ops)} canonical refusals={refused} "
          f"requests={sent} breaches={len(breaches)}")
    for line in breaches[:50]:
        print(f"fuzz_paths: BREACH {line}")
    sys.exit(1 if breaches else 0)


if __name__ == "__main__":
    main()

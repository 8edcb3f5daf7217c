#!/usr/bin/env python3
"""Opens an API-key session on a vmreg server, as a Mac node's client does, and prints its
`Authorization` header value, for scripts/fuzz.sh.

As root: a permission group granting every permission (or those `open_session` is given),
and an API key in it (the server makes the key pair and returns the private key once). Then the TAP handshake: `hand`
answers a secret encrypted to the key (RSA-OAEP, SHA-256), decrypted here with openssl;
`shake` trades it for the session, whose `data` base64-encoded is the Bearer token.

    scripts/fuzz_session.py URL ROOT_TOKEN KEY_ID
"""

import base64
import json
import subprocess
import sys
import tempfile
import urllib.request


def call(url, method, body, root=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data)
    req.add_header("Content-Type", "application/json")
    if root is not None:
        basic = base64.b64encode(f"root:{root}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def decrypt(private_der, sealed):
    with tempfile.TemporaryDirectory() as tmp:
        der = f"{tmp}/key.der"
        with open(der, "wb") as f:
            f.write(private_der)
        return subprocess.run(
            [
                "openssl", "pkeyutl", "-decrypt", "-keyform", "DER", "-inkey", der,
                "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
                "-pkeyopt", "rsa_mgf1_md:sha256",
            ],
            input=sealed, capture_output=True, check=True,
        ).stdout.decode()


def open_session(url, root, key, permissions=None):
    """Makes key `key` in a group of `permissions` (every one when None) and answers the
    Bearer token of its session."""
    if permissions is None:
        names = json.loads(call(f"{url}/admin/api/v1/permission", "GET", None, root))["body"]
        permissions = [p["name"] for p in names]
    group = f"{key}-group"
    call(f"{url}/admin/api/v1/permission/group/{group}", "PUT",
         {"permissions": permissions}, root)
    created = json.loads(call(f"{url}/v1/apikey", "POST",
                              {"id": key, "ttl": 3600, "groups": [group]}, root))
    private_der = base64.b64decode(created["body"])
    sealed = base64.b64decode(call(f"{url}/tap/v1/hand", "POST", {"id": key}))
    secret = decrypt(private_der, sealed)
    shaken = json.loads(call(f"{url}/tap/v1/shake", "POST", {"id": key, "secret": secret}))
    if shaken.get("status") != "OK" or shaken.get("id") != key:
        sys.exit(f"fuzz_session: the handshake failed: {shaken}")
    return base64.b64encode(json.dumps(shaken["data"]).encode()).decode()


def main():
    url, root, key = sys.argv[1:4]
    token = open_session(url, root, key)
    # The session must open what a key may: else the fuzz run would only meet 401s.
    req = urllib.request.Request(f"{url}/registry/v2/vm")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        if json.loads(resp.read()).get("status") != "OK":
            sys.exit("fuzz_session: the session cannot list templates")
    print(f"Bearer {token}")


if __name__ == "__main__":
    main()

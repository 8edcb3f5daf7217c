"""Pushes and pulls artifacts through vmreg with oras-py, a real OCI client.

Usage: python roundtrip.py <host:port> [<user> <password>]

Pushes a multi-part layer in chunks and a small one in one request, pulls both back and
compares the bytes, lists and pages the tags, reads the manifest, deletes a tag. With a
user and password the client logs in the way it does everywhere: it meets the 401's
Bearer challenge and trades the Basic credentials at the token endpoint. Exits non-zero
on the first difference.
"""

import hashlib
import os
import sys
import tempfile

import oras.client


def check(cond, what):
    if not cond:
        sys.exit(f"oras roundtrip: {what}")


def main():
    host = sys.argv[1]
    client = oras.client.OrasClient(hostname=host, insecure=True)
    if len(sys.argv) == 4:
        # What `login` does first; login itself also writes a Docker config file.
        client.auth.set_basic_auth(sys.argv[2], sys.argv[3])

    with tempfile.TemporaryDirectory(prefix="vmreg-oras-") as work:
        os.chdir(work)
        roundtrip(client, host, logged_in=len(sys.argv) == 4)
    print("oras roundtrip: ok")


def roundtrip(client, host, logged_in):
    big = os.urandom(13 * 1024 * 1024 + 12345)
    small = b"a config of a VM\n"
    with open("disk.img", "wb") as f:
        f.write(big)
    with open("notes.txt", "wb") as f:
        f.write(small)

    chunked = f"{host}/oras/chunked"
    reply = client.push(
        target=f"{chunked}:v1",
        files=["disk.img", "notes.txt"],
        do_chunked=True,
        chunk_size=3 * 1024 * 1024,
        quiet=True,
    )
    check(reply.status_code == 201, f"chunked push answered {reply.status_code}")
    for tag in ["v2", "v3", "latest"]:
        reply = client.push(target=f"{chunked}:{tag}", files=["notes.txt"], quiet=True)
        check(reply.status_code == 201, f"push of {tag} answered {reply.status_code}")
    mono = f"{host}/oras/monolithic:v1"
    reply = client.push(target=mono, files=["disk.img"], quiet=True)
    check(reply.status_code == 201, f"monolithic push answered {reply.status_code}")

    for target, names in [(f"{chunked}:v1", ["disk.img", "notes.txt"]), (mono, ["disk.img"])]:
        out = tempfile.mkdtemp(prefix="pull-", dir=".")
        pulled = client.pull(target=target, outdir=out)
        check(sorted(os.path.basename(p) for p in pulled) == names, f"{target} pulled {pulled}")
        for name in names:
            with open(os.path.join(out, name), "rb") as f:
                got = f.read()
            want = big if name == "disk.img" else small
            check(
                hashlib.sha256(got).digest() == hashlib.sha256(want).digest(),
                f"{target} {name}: the pulled bytes differ",
            )

    manifest = client.get_manifest(f"{chunked}:v1")
    sizes = sorted(layer["size"] for layer in manifest["layers"])
    check(sizes == [len(small), len(big)], f"manifest layers {sizes}")

    # get_tags follows the Link header page by page when N is smaller than the list.
    tags = client.get_tags(chunked)
    check(tags == ["latest", "v1", "v2", "v3"], f"tags {tags}")
    check(client.get_tags(chunked, N=2) == ["latest", "v1"], "the first page of two tags")

    check(client.delete_tag(chunked, "v2"), "delete_tag v2")
    tags = client.get_tags(chunked)
    check("v2" not in tags and "v1" in tags, f"tags after the delete {tags}")
    if logged_in:
        # The client met the Bearer challenge and got a token for its Basic credentials.
        check(getattr(client.auth, "token", None), "no token from the token endpoint")


if __name__ == "__main__":
    main()

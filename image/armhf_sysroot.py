#!/usr/bin/env python3
"""Fetches Debian bookworm's libc6:armhf and libgcc-s1:armhf, the C library the armv7 binary
links, and unpacks them into a sysroot, on any Linux with Python 3 and gpgv (no apt, no dpkg).

  python3 image/armhf_sysroot.py SYSROOT [--mirror http://deb.debian.org]

The chain of trust is apt's: each suite's InRelease is checked with gpgv against Debian's
bookworm archive keys (image/debian-archive-bookworm.asc, their public keys), the package list
against the SHA-256 the signed InRelease names, and each package against the SHA-256 its list
names. The newest version of each package over bookworm, bookworm-updates and
bookworm-security is taken, as apt would. Writes SYSROOT.tmp, then renames it to SYSROOT with a
.complete file naming the packages.
"""

import argparse
import base64
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "debian-archive-bookworm.asc")
SUITES = [("debian", "bookworm"), ("debian", "bookworm-updates"), ("debian-security", "bookworm-security")]
PACKAGES = ["libc6", "libgcc-s1"]
INDEX = "main/binary-armhf/Packages.xz"


def fetch(url):
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def dearmor(text):
    """The binary keyring in an ASCII-armoured public key block (gpgv reads only binary)."""
    body = text.split("\n\n", 1)[1].split("-----END", 1)[0]
    lines = [line for line in body.splitlines() if line and not line.startswith("=")]
    return base64.b64decode("".join(lines))


def verified(in_release, keyring, work):
    """The signed text of an InRelease file, once gpgv accepts its signature."""
    signed = os.path.join(work, "InRelease")
    text = os.path.join(work, "InRelease.txt")
    with open(signed, "wb") as f:
        f.write(in_release)
    # As apt: one good signature by a key given is enough (Debian signs with several, some of
    # them newer than the keys here); a bad one (a changed file) is never accepted.
    result = subprocess.run(["gpgv", "--quiet", "--status-fd", "1", "--keyring", keyring, "--output", text, signed],
                            capture_output=True, text=True)
    status = result.stdout.splitlines()
    good = any(line.startswith("[GNUPG:] VALIDSIG ") for line in status)
    bad = any(line.startswith("[GNUPG:] BADSIG ") for line in status)
    if bad or not good or not os.path.exists(text):
        sys.exit(f"InRelease: no good signature by Debian's bookworm keys: {result.stderr.strip()}")
    with open(text, encoding="utf-8") as f:
        return f.read()


def sha256_of(release, name):
    """The SHA-256 and size a Release file names for one index."""
    section = release.split("\nSHA256:\n", 1)[1]
    for line in section.splitlines():
        if not line.startswith(" "):
            break
        digest, size, path = line.split()
        if path == name:
            return digest, int(size)
    sys.exit(f"the Release file names no {name}")


def stanzas(text):
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            yield fields


def version_key(version):
    """Debian's version order (epoch, upstream, revision; `~` before anything)."""
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")

    def part(text):
        key = []
        for letters, digits in re.findall(r"([^0-9]*)([0-9]*)", text):
            key.append(tuple(ord(c) - 512 if c == "~" else ord(c) if c.isalpha() else ord(c) + 256
                             for c in letters) + (0,))
            key.append(int(digits or 0))
        return key

    return (int(epoch or 0), part(upstream), part(revision))


def index(base, suite, keyring, work):
    """A suite's armhf package list, checked against its signed InRelease."""
    release = verified(fetch(f"{base}/dists/{suite}/InRelease"), keyring, work)
    digest, _ = sha256_of(release, INDEX)
    # By hash, as apt does: the index the signed file names, even while the mirror syncs.
    folder = INDEX.rsplit("/", 1)[0]
    packed = fetch(f"{base}/dists/{suite}/{folder}/by-hash/SHA256/{digest}")
    if hashlib.sha256(packed).hexdigest() != digest:
        raise IndexError(f"{INDEX}: the SHA-256 is not the one the signed InRelease names")
    return packed


def check(data, digest, what):
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit(f"{what}: the SHA-256 is not the one the signed index names")


def deb_data(deb):
    """The data.tar.* member of a .deb (an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        sys.exit("not a .deb")
    at = 8
    while at < len(deb):
        header = deb[at:at + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[at + 60:at + 60 + size]
        if name.startswith("data.tar"):
            return name, body
        at += 60 + size + (size % 2)
    sys.exit("no data.tar in the .deb")


def unpack(deb, root):
    name, body = deb_data(deb)
    if name.endswith(".xz"):
        body = lzma.decompress(body)
    elif not name.endswith(".tar"):
        sys.exit(f"{name}: unknown compression")
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(root, filter="tar")
        else:
            tar.extractall(root)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sysroot")
    parser.add_argument("--mirror", default="http://deb.debian.org")
    args = parser.parse_args()
    if not shutil.which("gpgv"):
        sys.exit("gpgv is needed to check Debian's signatures (package gnupg or gpgv)")
    work = tempfile.mkdtemp()
    try:
        keyring = os.path.join(work, "keys.gpg")
        with open(KEYS, encoding="ascii") as f, open(keyring, "wb") as out:
            out.write(dearmor(f.read()))
        candidates = {}
        for archive, suite in SUITES:
            base = f"{args.mirror}/{archive}"
            try:
                packed = index(base, suite, keyring, work)
            except (IndexError, urllib.error.URLError) as e:
                if suite == "bookworm":
                    sys.exit(f"{suite}: {e}")
                # As apt-get update does, a suite of updates that a mirror in the middle of a
                # sync cannot give is left out, and said so.
                print(f"warning: {suite} left out: {e}", file=sys.stderr)
                continue
            for fields in stanzas(lzma.decompress(packed).decode("utf-8")):
                if fields.get("Package") in PACKAGES:
                    fields["base"] = base
                    best = candidates.get(fields["Package"])
                    if best is None or version_key(fields["Version"]) > version_key(best["Version"]):
                        candidates[fields["Package"]] = fields
        missing = [p for p in PACKAGES if p not in candidates]
        if missing:
            sys.exit(f"not in bookworm's armhf lists: {', '.join(missing)}")
        tmp = args.sysroot + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        names = []
        for package in PACKAGES:
            fields = candidates[package]
            deb = fetch(f"{fields['base']}/{fields['Filename']}")
            check(deb, fields["SHA256"], fields["Filename"])
            unpack(deb, tmp)
            names.append(os.path.basename(fields["Filename"]))
            print(f"unpacked {package} {fields['Version']}", file=sys.stderr)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write("".join(n + "\n" for n in names))
        shutil.rmtree(args.sysroot, ignore_errors=True)
        os.rename(tmp, args.sysroot)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

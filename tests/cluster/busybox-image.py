#!/usr/bin/env python3
"""Writes the real node's small images as one OCI archive, from Debian's busybox-static.

No registry is reachable from the test bed, so the node's containerd imports this archive. It holds
one image under several names: the pod sandbox ("pause") image, which runs `sleep` forever, and the
upgrade image that test Plans run, with `sh`, `grep`, `sleep` and the other busybox applets on PATH.

  busybox-image.py OUT.tar NAME:TAG [NAME:TAG...]
"""

import io
import os
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "image"))
import oci  # noqa: E402  (the project's deterministic OCI writer)

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "grep", "sleep", "cat", "echo", "date", "touch", "mkdir", "ls", "rm", "test", "env",
           "printf", "tee", "wc", "head", "tail", "true", "false", "id", "hostname", "uname", "nc"]


def layer():
    """A tar with /bin/busybox, one symlink per applet and an empty /tmp, root-owned, mtime 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo("bin/" + applet)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def main():
    if len(sys.argv) < 3 or not os.path.exists(BUSYBOX):
        sys.exit(__doc__ + f"\nneeds {BUSYBOX} (Debian: apt-get install busybox-static)")
    out, names = sys.argv[1], sys.argv[2:]
    blobs = oci.Blobs()
    tar = layer()
    layer_descriptor = blobs.add(oci.OCI_LAYER, oci.gzipped(tar))
    config = {
        "created": oci.time_of(0),
        "os": "linux",
        "architecture": "amd64",
        "config": {
            "Env": ["PATH=/bin"],
            # The sandbox container runs this; containers with a command of their own do not.
            "Cmd": ["/bin/sleep", "2147483647"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [oci.digest(tar)]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": blobs.add(oci.OCI_CONFIG, oci.canonical(config)),
        "layers": [layer_descriptor],
    }
    descriptor = blobs.add(oci.OCI_MANIFEST, oci.canonical(manifest))
    manifests = []
    for name in names:
        full = name if "/" in name.split(":")[0] else "docker.io/library/" + name
        manifests.append({**descriptor, "annotations": {"io.containerd.image.name": full}})
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}
    print(oci.write_archive(out, blobs, index))


if __name__ == "__main__":
    main()

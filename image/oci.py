#!/usr/bin/env python3
"""Writes OCI image archives from one prepared root file system per platform, without a daemon.

Each platform's root becomes a single gzip layer on an empty base; its image config runs
/system-upgrade-controller as user 65534. Every timestamp is --created and every owner is root, so
the same inputs give byte-identical archives. Written:

  NAME-TAG.oci.tar              an OCI image layout whose index.json names one image index with a
                                manifest per platform (for skopeo, registries, `ctr images import`)
  NAME-TAG-OS-ARCH[-VARIANT].tar  one platform each: an OCI layout plus the manifest.json that
                                `docker load` reads (podman and ctr read either)

Only the standard library is used.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blobs:
    """The content-addressed blobs of one archive."""

    def __init__(self):
        self.blobs = {}

    def add(self, media_type, data, **extra):
        d = digest(data)
        self.blobs[d] = data
        return {"mediaType": media_type, "digest": d, "size": len(data), **extra}


def layer_tar(root, created):
    """An uncompressed tar of root: sorted, root-owned, every mtime `created`, no symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = [os.path.join(d, entry) for d, dirs, files in os.walk(root) for entry in dirs + files]
        for path in sorted(paths, key=lambda p: os.path.relpath(p, root)):
            if os.path.islink(path):
                sys.exit(f"{path}: the layer takes files and directories only, not symlinks")
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = created
            info.mode = os.stat(path).st_mode & 0o7777
            info.pax_headers = {}
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def gzipped(data):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return out.getvalue()


def platform_of(spec):
    parts = spec.split("/")
    if len(parts) not in (2, 3):
        sys.exit(f"platform {spec!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    platform = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        platform["variant"] = parts[2]
    return platform


def image(blobs, platform, root, args):
    """Adds one platform's layer, config and manifest; returns their three descriptors."""
    tar = layer_tar(root, args.created)
    layer = blobs.add(OCI_LAYER, gzipped(tar))
    created = time_of(args.created)
    labels = {
        "org.opencontainers.image.title": "system-upgrade-controller",
        "org.opencontainers.image.description": "Upgrades Kubernetes nodes as declared in "
        "upgrade.cattle.io/v1 Plans, with an admission webhook",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    if args.source:
        # GitHub links a package with this label to its repository (and its visibility).
        labels["org.opencontainers.image.source"] = args.source
    config = {
        "created": created,
        **platform,
        "config": {
            "User": "65534:65534",
            "Entrypoint": ["/system-upgrade-controller"],
            "Cmd": ["run"],
            "ExposedPorts": {"8443/tcp": {}},
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        "history": [{"created": created, "created_by": "image/build.sh"}],
    }
    config_descriptor = blobs.add(OCI_CONFIG, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": [layer],
        "annotations": {"org.opencontainers.image.created": created},
    }
    return blobs.add(OCI_MANIFEST, canonical(manifest), platform=platform), config_descriptor, layer


def time_of(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_archive(path, blobs, index, docker_manifest=None):
    """An OCI layout (oci-layout, index.json, blobs/sha256/*) as one tar, written atomically."""
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
    }
    if docker_manifest is not None:
        files["manifest.json"] = canonical(docker_manifest)
    for d, data in blobs.blobs.items():
        files["blobs/sha256/" + d.split(":", 1)[1]] = data
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True, help="repository, e.g. ghcr.io/OWNER/system-upgrade-controller")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--source", default="", help="the repository's URL, e.g. https://github.com/OWNER/NAME")
    parser.add_argument("--created", type=int, required=True, help="seconds since the epoch")
    parser.add_argument("--platform", action="append", required=True, metavar="OS/ARCH[/VARIANT]=ROOT")
    args = parser.parse_args()

    base = os.path.basename(args.name)
    reference = args.name + ":" + args.tag
    # containerd names an imported image by this annotation; a bare name is Docker Hub's library.
    full_reference = reference if "/" in args.name.split(":")[0] else "docker.io/library/" + reference
    names = {"org.opencontainers.image.ref.name": args.tag, "io.containerd.image.name": full_reference}

    every = Blobs()
    manifests = []
    for spec in args.platform:
        platform_spec, _, root = spec.partition("=")
        platform = platform_of(platform_spec)
        descriptor, config, layer = image(every, platform, root, args)
        manifests.append(descriptor)

        single = Blobs()
        for d in (descriptor, config, layer):
            single.blobs[d["digest"]] = every.blobs[d["digest"]]
        docker = [{
            "Config": "blobs/sha256/" + config["digest"].split(":", 1)[1],
            "RepoTags": [reference],
            "Layers": ["blobs/sha256/" + layer["digest"].split(":", 1)[1]],
        }]
        single_index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{**descriptor, "annotations": names}],
        }
        suffix = "-".join(platform_spec.split("/"))
        print(write_archive(os.path.join(args.out, f"{base}-{args.tag}-{suffix}.tar"), single, single_index, docker))

    image_index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    index_descriptor = every.add(OCI_INDEX, canonical(image_index))
    layout_index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{**index_descriptor, "annotations": names}],
    }
    print(write_archive(os.path.join(args.out, f"{base}-{args.tag}.oci.tar"), every, layout_index))


if __name__ == "__main__":
    main()

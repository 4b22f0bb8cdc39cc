#!/usr/bin/env python3
"""Checks the archives image/build.sh wrote, as a user's tools would read them.

  python3 image/check.py [DIST] [--platforms linux/amd64,linux/arm64,linux/arm/v7]

For the multi-platform archive and each single-platform one: every blob matches its digest and
size; the index names each platform once; each image config has the platform, entrypoint, user
65534 and labels; the layer holds the binary for that CPU, the CA bundle and no shell, owned by
root. Then each platform's layer is unpacked alone and its binary runs from it (arm64 and armv7
under Debian's qemu user emulation, which finds the loader and C library only in the layer):
`--version` names the image's version and commit, `check -f` accepts the example Plans and
rejects a bad one. Then skopeo (Debian's) reads every archive: the OCI layouts, and the
single-platform ones as docker archives too. Last, a private containerd (Debian's) imports them
as `k3s ctr images import` does and runs this machine's image as a container with runc, and
podman (Debian's, a private store) loads each archive as `podman load` users do.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELF_MACHINE = {"amd64": 62, "arm64": 183, "arm": 40}
QEMU = {"amd64": None, "arm64": "qemu-aarch64-static", "arm": "qemu-arm-static"}
SHELLS = {"sh", "bash", "ash", "dash", "zsh", "busybox", "toybox"}
failures = []


def fail(message):
    failures.append(message)
    print("FAIL " + message, flush=True)


def ok(message):
    print("ok   " + message, flush=True)


class Archive:
    def __init__(self, path):
        self.path = path
        with tarfile.open(path) as tar:
            self.files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def json(self, name):
        return json.loads(self.files[name])

    def blob(self, descriptor, where):
        """The blob a descriptor names, after checking its digest and size."""
        algorithm, _, hex_digest = descriptor["digest"].partition(":")
        data = self.files.get(f"blobs/{algorithm}/{hex_digest}")
        if data is None:
            fail(f"{where}: blob {descriptor['digest']} is missing")
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor["digest"]:
            fail(f"{where}: blob {descriptor['digest']} does not match its digest")
        if len(data) != descriptor["size"]:
            fail(f"{where}: blob {descriptor['digest']} is {len(data)} bytes, descriptor says {descriptor['size']}")
        return data


def platform_name(platform):
    return "/".join(filter(None, [platform.get("os"), platform.get("architecture"), platform.get("variant")]))


def check_layout(archive, name, tag):
    """The layout's top index: one entry, named for skopeo (ref.name) and containerd."""
    if archive.json("oci-layout") != {"imageLayoutVersion": "1.0.0"}:
        fail(f"{archive.path}: oci-layout is not version 1.0.0")
    entries = archive.json("index.json")["manifests"]
    if len(entries) != 1:
        fail(f"{archive.path}: index.json lists {len(entries)} entries, expected 1")
    annotations = entries[0].get("annotations", {})
    if annotations.get("org.opencontainers.image.ref.name") != tag:
        fail(f"{archive.path}: ref.name is {annotations.get('org.opencontainers.image.ref.name')!r}, expected {tag!r}")
    if not annotations.get("io.containerd.image.name", "").endswith(f"{name}:{tag}"):
        fail(f"{archive.path}: io.containerd.image.name is {annotations.get('io.containerd.image.name')!r}")
    return entries[0]


def check_image(archive, descriptor, expected_platform, work):
    """One platform's manifest, config and layer; unpacks the layer and returns its root."""
    where = f"{os.path.basename(archive.path)} {expected_platform}"
    manifest = json.loads(archive.blob(descriptor, where) or b"{}")
    config = json.loads(archive.blob(manifest["config"], where) or b"{}")
    os_, arch, *variant = expected_platform.split("/")
    if (config.get("os"), config.get("architecture"), config.get("variant")) != (os_, arch, (variant or [None])[0]):
        fail(f"{where}: config says {config.get('os')}/{config.get('architecture')}/{config.get('variant')}")
    run = config.get("config", {})
    if run.get("Entrypoint") != ["/system-upgrade-controller"] or run.get("Cmd") != ["run"]:
        fail(f"{where}: entrypoint {run.get('Entrypoint')} {run.get('Cmd')}")
    if run.get("User") != "65534:65534":
        fail(f"{where}: user {run.get('User')!r}, expected 65534:65534")
    if len(manifest["layers"]) != 1:
        fail(f"{where}: {len(manifest['layers'])} layers, expected one on an empty base")
    compressed = archive.blob(manifest["layers"][0], where) or b""
    layer = gzip.decompress(compressed)
    if config["rootfs"]["diff_ids"] != ["sha256:" + hashlib.sha256(layer).hexdigest()]:
        fail(f"{where}: diff_id does not match the uncompressed layer")

    root = os.path.join(work, expected_platform.replace("/", "-"))
    os.makedirs(root)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
        names = {m.name: m for m in members}
        for m in members:
            if m.uid or m.gid:
                fail(f"{where}: {m.name} is owned by {m.uid}:{m.gid}, not root")
            if os.path.basename(m.name) in SHELLS:
                fail(f"{where}: the image holds a shell, {m.name}")
            if m.issym() or m.islnk():
                fail(f"{where}: {m.name} is a link")
        binary = names.get("system-upgrade-controller")
        if binary is None or binary.mode & 0o111 == 0:
            fail(f"{where}: no executable /system-upgrade-controller")
        if "etc/ssl/certs/ca-certificates.crt" not in names:
            fail(f"{where}: no CA bundle at /etc/ssl/certs/ca-certificates.crt")
        # The extraction filter exists from Python 3.11.4 on; links were refused above anyway.
        tar.extractall(root, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    elf = open(os.path.join(root, "system-upgrade-controller"), "rb").read(64)
    machine = int.from_bytes(elf[18:20], "little")
    if elf[:4] != b"\x7fELF" or machine != ELF_MACHINE[arch]:
        fail(f"{where}: the binary is for ELF machine {machine}, expected {ELF_MACHINE[arch]}")
    ok(f"{where}: {config.get('os')}/{config.get('architecture')}{'/' + config['variant'] if config.get('variant') else ''}, "
       f"user {run.get('User')}, {len(members)} entries, no shell, layer {len(compressed) // 1024} KiB")
    return root, manifest, config


def run_binary(root, arch, args):
    binary = os.path.join(root, "system-upgrade-controller")
    qemu = QEMU[arch]
    # Under qemu, -L makes the layer the root for the loader and every library the binary opens.
    command = [qemu, "-L", root, binary, *args] if qemu else [binary, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def check_runs(root, platform, config):
    arch = platform.split("/")[1]
    labels = config["config"]["Labels"]
    expected = (f"system-upgrade-controller {labels['org.opencontainers.image.version']} "
                f"(commit {labels['org.opencontainers.image.revision']})")
    version = run_binary(root, arch, ["--version"])
    if version.returncode != 0 or version.stdout.strip() != expected:
        fail(f"{platform}: --version printed {version.stdout.strip()!r} {version.stderr.strip()!r}, expected {expected!r}")
    else:
        ok(f"{platform}: --version: {version.stdout.strip()}")
    examples = sorted(
        os.path.join(directory, f)
        for directory, _, files in os.walk(os.path.join(REPO, "examples"))
        for f in files if f.endswith(".yaml")
    )
    # A window in Europe/Berlin: the time zone database is in the binary.
    examples.append(os.path.join(REPO, "tests/plans/valid/window-overnight-berlin.yaml"))
    good = run_binary(root, arch, ["check", "-f", *examples])
    if good.returncode != 0:
        fail(f"{platform}: check -f examples/ failed: {good.stdout}{good.stderr}")
    else:
        ok(f"{platform}: check -f accepts {len(examples)} files of valid Plans")
    bad = run_binary(root, arch, ["check", "-f", os.path.join(REPO, "tests/plans/invalid/window-bad-zone.yaml")])
    if bad.returncode != 1 or '"Mars/Base" is not a known IANA time zone' not in bad.stdout:
        fail(f"{platform}: check -f of a Plan with an unknown time zone: exit {bad.returncode}: {bad.stdout}{bad.stderr}")
    else:
        ok(f"{platform}: check -f rejects an unknown time zone")


def skopeo(*args):
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300)


def check_containerd(multi_path, single_paths, reference, work):
    """Imports the archives into a private containerd (Debian's; what `k3s ctr images import`
    does) and runs the image of this machine's platform as a container with ctr and runc."""
    if os.geteuid() != 0:
        fail("containerd and runc need root: run image/check.py with sudo")
        return
    state = os.path.join(work, "containerd")
    os.makedirs(state)
    address = os.path.join(state, "containerd.sock")
    config = os.path.join(state, "config.toml")
    with open(config, "w") as f:
        f.write('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    log = open(os.path.join(state, "log"), "w")
    daemon = subprocess.Popen(
        ["containerd", "--config", config, "--root", os.path.join(state, "root"),
         "--state", os.path.join(state, "state"), "--address", address],
        stdout=log, stderr=subprocess.STDOUT)

    def ctr(*args, namespace="suc-image-check"):
        return subprocess.run(["ctr", "--address", address, "--namespace", namespace, *args],
                              capture_output=True, text=True, timeout=300)

    try:
        for _ in range(100):
            if ctr("version").returncode == 0:
                break
            time.sleep(0.1)
        imported = ctr("images", "import", "--all-platforms", "--no-unpack", multi_path, namespace="suc-multi")
        listed = ctr("images", "ls", "-q", namespace="suc-multi")
        if imported.returncode != 0 or reference not in listed.stdout.split():
            fail(f"{multi_path}: containerd's import: {imported.stdout}{imported.stderr} lists {listed.stdout.split()}")
        else:
            ok(f"{os.path.basename(multi_path)}: containerd imports it as {reference}")
        machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
        native = [p for p in single_paths if p.endswith(f"-linux-{machine}.tar")]
        if not native:
            fail(f"no single-platform archive for this machine ({os.uname().machine}) to run")
            return
        imported = ctr("images", "import", "--snapshotter", "native", native[0])
        if imported.returncode != 0:
            fail(f"{native[0]}: containerd's import: {imported.stderr}")
            return
        run = ctr("run", "--rm", "--snapshotter", "native", reference, "suc-image-check",
                  "/system-upgrade-controller", "--version")
        if run.returncode != 0 or not run.stdout.startswith("system-upgrade-controller "):
            fail(f"{native[0]}: the container did not run: {run.stdout}{run.stderr}")
        else:
            ok(f"{os.path.basename(native[0])}: containerd runs it with runc: {run.stdout.strip()}")
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def check_podman(paths, reference, work):
    """`podman load` (Debian's podman, a private store) takes every archive under its name."""
    store = os.path.join(work, "podman")
    base = ["podman", "--root", os.path.join(store, "root"), "--runroot", os.path.join(store, "run"),
            "--storage-driver", "vfs"]
    for path in paths:
        loaded = subprocess.run([*base, "load", "-i", path], capture_output=True, text=True, timeout=300)
        listed = subprocess.run([*base, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                capture_output=True, text=True, timeout=60)
        if loaded.returncode != 0 or reference not in listed.stdout.split():
            fail(f"{path}: podman load: {loaded.stdout}{loaded.stderr} lists {listed.stdout.split()}")
        else:
            ok(f"{os.path.basename(path)}: podman loads it as {reference}")
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dist", nargs="?", default=os.path.join(REPO, "dist"))
    parser.add_argument("--platforms", default="linux/amd64,linux/arm64,linux/arm/v7")
    parser.add_argument("--name", default="system-upgrade-controller")
    parser.add_argument("--tag")
    args = parser.parse_args()
    if args.tag is None:
        args.tag = next(line.split('"')[1] for line in open(os.path.join(REPO, "Cargo.toml")) if line.startswith("version"))
    platforms = args.platforms.split(",")
    base = os.path.basename(args.name)
    work = tempfile.mkdtemp()
    single_paths = []
    try:
        multi_path = os.path.join(args.dist, f"{base}-{args.tag}.oci.tar")
        multi = Archive(multi_path)
        top = check_layout(multi, args.name, args.tag)
        index = json.loads(multi.blob(top, multi_path) or b"{}")
        listed = [platform_name(m.get("platform", {})) for m in index.get("manifests", [])]
        if sorted(listed) != sorted(platforms):
            fail(f"{multi_path}: the image index lists {listed}, expected {platforms}")
        for descriptor in index.get("manifests", []):
            platform = platform_name(descriptor.get("platform", {}))
            if platform not in platforms:
                continue
            root, _, config = check_image(multi, descriptor, platform, os.path.join(work, "multi"))
            check_runs(root, platform, config)

            single_path = os.path.join(args.dist, f"{base}-{args.tag}-{platform.replace('/', '-')}.tar")
            single_paths.append(single_path)
            single = Archive(single_path)
            entry = check_layout(single, args.name, args.tag)
            if entry["digest"] != descriptor["digest"]:
                fail(f"{single_path}: its manifest differs from the {platform} manifest of the multi-platform image")
            _, manifest, _ = check_image(single, entry, platform, os.path.join(work, "single"))
            docker = single.json("manifest.json")
            wanted = [{
                "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":")[1],
                "RepoTags": [f"{args.name}:{args.tag}"],
                "Layers": ["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]],
            }]
            if docker != wanted:
                fail(f"{single_path}: manifest.json is {docker}, expected {wanted}")

            copy = skopeo("copy", "-q", f"docker-archive:{single_path}", f"oci:{work}/from-docker:{args.tag}")
            inspect = skopeo("inspect", "--config", f"oci:{work}/from-docker:{args.tag}")
            shutil.rmtree(f"{work}/from-docker", ignore_errors=True)
            arch = platform.split("/")[1]
            if copy.returncode != 0 or inspect.returncode != 0 or json.loads(inspect.stdout)["architecture"] != arch:
                fail(f"{single_path}: skopeo cannot read it as a docker archive: {copy.stderr}{inspect.stderr}")
            else:
                ok(f"{os.path.basename(single_path)}: skopeo reads it as a docker archive ({arch})")

        raw = skopeo("inspect", "--raw", f"oci-archive:{multi_path}:{args.tag}")
        if raw.returncode != 0 or json.loads(raw.stdout) != index:
            fail(f"{multi_path}: skopeo inspect --raw: {raw.stderr}")
        copy = skopeo("copy", "-q", "--all", f"oci-archive:{multi_path}:{args.tag}", f"oci:{work}/copy:{args.tag}")
        if copy.returncode != 0:
            fail(f"{multi_path}: skopeo copy --all: {copy.stderr}")
        for platform in platforms:
            _, arch, *variant = platform.split("/")
            override = ["--override-arch", arch] + (["--override-variant", variant[0]] if variant else [])
            picked = skopeo(*override, "inspect", "--config", f"oci-archive:{multi_path}:{args.tag}")
            if picked.returncode != 0 or json.loads(picked.stdout)["architecture"] != arch:
                fail(f"{multi_path}: skopeo does not pick the {platform} image: {picked.stderr}")
        ok(f"{os.path.basename(multi_path)}: skopeo reads, copies (--all) and picks each of {len(platforms)} platforms")
        full_reference = top["annotations"]["io.containerd.image.name"]
        check_containerd(multi_path, single_paths, full_reference, work)
        check_podman([multi_path, *single_paths], full_reference, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit(f"{len(failures)} image check(s) failed")
    print("every image check passed")


if __name__ == "__main__":
    main()

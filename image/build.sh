#!/usr/bin/env bash
# Builds the controller's image for linux/amd64, linux/arm64 and linux/arm/v7 without any container
# daemon: image/rootfs.sh cross-compiles each platform's release binary (cargo-zigbuild) and lays
# out its file system (the binary, the CA bundle and, for armv7, the C library); image/oci.py
# writes the OCI archives.
#
#   bash image/build.sh                       # all three platforms into dist/
#   SUC_IMAGE_PLATFORMS=linux/arm64 bash image/build.sh
#
# Settings (environment): SUC_IMAGE_PLATFORMS (comma-separated), SUC_IMAGE_OUT (dist),
# SUC_IMAGE_NAME (system-upgrade-controller; the repository part of the reference, e.g.
# ghcr.io/OWNER/system-upgrade-controller), SUC_IMAGE_TAG (the crate's version), SUC_IMAGE_SOURCE
# (the source repository's URL, the org.opencontainers.image.source label; none when unset).
#
# Output, in SUC_IMAGE_OUT:
#   system-upgrade-controller-TAG.oci.tar              every platform, one image index
#   system-upgrade-controller-TAG-linux-ARCH[-v7].tar  one platform each, also docker-load-able
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

platforms="${SUC_IMAGE_PLATFORMS:-linux/amd64,linux/arm64,linux/arm/v7}"
out="${SUC_IMAGE_OUT:-dist}"
name="${SUC_IMAGE_NAME:-system-upgrade-controller}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
tag="${SUC_IMAGE_TAG:-$version}"
# The commit and its time: in --version, the image's labels and every timestamp of the archive, so
# the same commit gives the same image.
# (build.rs works it out the same way when this is unset.)
if [[ -z ${SUC_GIT_COMMIT:-} ]]; then
  SUC_GIT_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  [[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || SUC_GIT_COMMIT+=-dirty
fi
export SUC_GIT_COMMIT
created="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
oci_args=()
IFS=, read -r -a platform_list <<<"$platforms"
for platform in "${platform_list[@]}"; do
  root="$work/${platform//\//-}"
  bash image/rootfs.sh "$platform" "$root"
  oci_args+=(--platform "$platform=$root")
done

mkdir -p "$out"
python3 image/oci.py --out "$out" --name "$name" --tag "$tag" --created "$created" \
  --revision "$SUC_GIT_COMMIT" --version "$version" --source "${SUC_IMAGE_SOURCE:-}" "${oci_args[@]}"

#!/usr/bin/env bash
# Cross-compiles the release binary for one platform and lays out that platform's image file
# system in ROOT: the binary, the CA bundle and, for armv7, the C library it links.
#   bash image/rootfs.sh linux/arm64 /tmp/root-arm64
# Used by image/build.sh (daemonless OCI archives). Binaries are built in CARGO_TARGET_DIR, by
# default a cache outside the repository, so a second build only compiles what changed.
set -euo pipefail
platform="$1"
root="$2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=image/toolchain.sh
source image/toolchain.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/image-target}"

case "$platform" in
  linux/amd64) target=x86_64-unknown-linux-musl; zig_target=$target ;;
  linux/arm64) target=aarch64-unknown-linux-musl; zig_target=$target ;;
  # glibc 2.36 is the version of the C library the image carries (Debian bookworm's).
  linux/arm/v7) target=armv7-unknown-linux-gnueabihf; zig_target=$target.2.36 ;;
  *) echo "unknown platform $platform (known: linux/amd64, linux/arm64, linux/arm/v7)" >&2; exit 1 ;;
esac
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca_bundle ]] || { echo "no CA bundle at $ca_bundle: install Debian's ca-certificates" >&2; exit 1; }

echo "building $platform ($zig_target)" >&2
started=$SECONDS
cargo zigbuild --quiet --release --locked --target "$zig_target" --bin system-upgrade-controller >&2
echo "built $platform in $((SECONDS - started))s" >&2
binary="$CARGO_TARGET_DIR/$target/release/system-upgrade-controller"

mkdir -p "$root/etc/ssl/certs"
install -m 0755 "$binary" "$root/system-upgrade-controller"
install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
interpreter="$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
if [[ -n $interpreter ]]; then
  # A dynamic binary (armv7): its loader and every library it names, from the armhf sysroot.
  # Libraries go where Debian's loader looks first; the loader where the binary asks for it.
  mkdir -p "$root/lib/arm-linux-gnueabihf" "$root$(dirname "$interpreter")"
  install -m 0755 "$(readlink -f "$armhf_sysroot$interpreter")" "$root$interpreter"
  for lib in $(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    found="$(find "$armhf_sysroot" -name "$lib" -print -quit)"
    [[ -n $found ]] || { echo "$lib, needed by the $platform binary, is not in $armhf_sysroot" >&2; exit 1; }
    install -m 0644 "$(readlink -f "$found")" "$root/lib/arm-linux-gnueabihf/$lib"
  done
fi

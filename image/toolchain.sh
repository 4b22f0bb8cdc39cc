# Sourced by image/build.sh: makes the cross toolchain ready and puts it on PATH. Everything it
# fetches is cached by version under ~/.cache/suc-rs (SUC_TESTBIN_CACHE), outside the repository:
#   - zig (PyPI's ziglang) as the C toolchain and linker for every target, through cargo-zigbuild;
#   - the Rust standard libraries of the three targets (rustup);
#   - the armv7 C library: Debian's libc6:armhf and libgcc-s1:armhf, unpacked into a sysroot whose
#     files go into the armv7 image (this machine's rustup mirror serves no armv7 musl standard
#     library, so that binary links glibc dynamically and carries it).

zig_version=0.17.1
cargo_zigbuild_version=0.24.1
image_targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
mkdir -p "$cache"

zig_env="$cache/zig-$zig_version"
if ! "$zig_env/bin/python3" -m ziglang version >/dev/null 2>&1; then
  echo "installing zig $zig_version from PyPI into $zig_env" >&2
  rm -rf "$zig_env"
  python3 -m venv "$zig_env" >&2
  "$zig_env/bin/pip" install --quiet --disable-pip-version-check "ziglang==$zig_version" >&2
fi

zigbuild_root="$cache/cargo-zigbuild-$cargo_zigbuild_version"
if [[ ! -x "$zigbuild_root/bin/cargo-zigbuild" ]]; then
  echo "building cargo-zigbuild $cargo_zigbuild_version from crates.io into $zigbuild_root" >&2
  cargo install --quiet --locked "cargo-zigbuild@$cargo_zigbuild_version" --root "$zigbuild_root.tmp" >&2
  rm -rf "$zigbuild_root" && mv "$zigbuild_root.tmp" "$zigbuild_root"
fi
# cargo-zigbuild runs `python3 -m ziglang` when no zig is on PATH: the venv's python3 comes first.
export PATH="$zig_env/bin:$zigbuild_root/bin:$PATH"

installed_targets="$(rustup target list --installed)"
for target in "${image_targets[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target" >&2
done

# The unpacked armhf C library, for the armv7 image and for running that binary under qemu: from
# Debian bookworm (glibc 2.36, the version the armv7 binary is linked for) whatever the build
# machine runs, fetched and checked as apt would (signed InRelease, then digests) by
# image/armhf_sysroot.py with Python and gpgv alone, so any Linux builds the image.
armhf_sysroot="$cache/armhf-sysroot-bookworm"
if [[ ! -e "$armhf_sysroot/.complete" ]]; then
  echo "fetching Debian bookworm's libc6:armhf and libgcc-s1:armhf into $armhf_sysroot" >&2
  python3 "$(dirname "${BASH_SOURCE[0]}")/armhf_sysroot.py" "$armhf_sysroot" \
    --mirror "${SUC_DEBIAN_MIRROR:-http://deb.debian.org}" >&2
fi

# Sourced by image/build.sh: makes the cross toolchain ready and puts it on PATH. Everything it
# fetches is cached by version under ~/.cache/suc-rs (SUC_TESTBIN_CACHE), outside the repository:
#   - zig (PyPI's ziglang) as the C toolchain and linker for every target, through cargo-zigbuild;
#   - the Rust standard libraries of the three targets (rustup);
#   - the armv7 C library: Debian's libc6:armhf and libgcc-s1:armhf, unpacked into a sysroot whose
#     files go into the armv7 image (rustup serves no armv7 musl standard library, so that binary
#     links glibc dynamically and carries it).

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
# machine runs, with its own package lists, so the machine's apt sources and dpkg architectures
# are left as they are. Verified with Debian's archive keyring (package debian-archive-keyring).
debian_mirror="${SUC_DEBIAN_MIRROR:-http://deb.debian.org}"
armhf_sysroot="$cache/armhf-sysroot-bookworm"
if [[ ! -e "$armhf_sysroot/.complete" ]]; then
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -s $keyring ]] || { echo "no $keyring: install the package debian-archive-keyring" >&2; exit 1; }
  echo "fetching Debian bookworm's libc6:armhf and libgcc-s1:armhf into $armhf_sysroot" >&2
  apt_state="$(mktemp -d)"
  mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial" "$apt_state/debs" "$apt_state/sources.list.d"
  for suite in "debian bookworm" "debian bookworm-updates" "debian-security bookworm-security"; do
    echo "deb [arch=armhf signed-by=$keyring] $debian_mirror/${suite% *} ${suite#* } main"
  done >"$apt_state/sources.list"
  apt_options=(-o APT::Architecture=armhf -o APT::Architectures::=armhf
    -o "Dir::Etc::SourceList=$apt_state/sources.list" -o "Dir::Etc::SourceParts=$apt_state/sources.list.d"
    -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache"
    -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  # A mirror that is mid-sync fails one index now and then; the download below says if it matters.
  apt-get "${apt_options[@]}" update -qq >&2 || echo "apt-get update reported errors; trying the download" >&2
  (cd "$apt_state/debs" && apt-get "${apt_options[@]}" download libc6 libgcc-s1 >&2)
  rm -rf "$armhf_sysroot.tmp" && mkdir -p "$armhf_sysroot.tmp"
  for deb in "$apt_state"/debs/*.deb; do
    dpkg-deb -x "$deb" "$armhf_sysroot.tmp"
    basename "$deb" >>"$armhf_sysroot.tmp/.complete"
  done
  rm -rf "$apt_state" "$armhf_sysroot"
  mv "$armhf_sysroot.tmp" "$armhf_sysroot"
fi

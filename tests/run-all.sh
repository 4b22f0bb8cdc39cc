#!/usr/bin/env bash
# The README's test command: every test suite, with all set-up, on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One pass over the code gains nothing from incremental caches, which would double target/'s size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Tools the suites use besides Rust and Go, with the Debian package of each: openssl and curl
# (test PKI, health checks), python3 (free ports, the image scripts), kubectl (what a user runs),
# and for the image: gpgv (Debian's signatures on the armv7 C library), readelf, skopeo,
# containerd with runc, and podman (read, import, run and load the archives as users' tools do),
# qemu user emulation (runs the arm64 and armv7 binaries), and wrk (the webhook benchmark).
declare -A package_of=([openssl]=openssl [curl]=curl [python3]=python3 [kubectl]=kubernetes-client
  [readelf]=binutils [skopeo]=skopeo [qemu-aarch64-static]=qemu-user-static [qemu-arm-static]=qemu-user-static
  [containerd]=containerd [ctr]=containerd [runc]=runc [podman]=podman [wrk]=wrk [gpgv]=gpgv)
missing=()
for tool in "${!package_of[@]}"; do command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}"); done
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  # A mirror in the middle of a sync fails an index now and then; the install says if it matters.
  "${sudo_cmd[@]}" apt-get update -qq || true
  "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

# The Go tools the end-to-end suite needs first (the control plane, kwok, helm, the test probe,
# the monitoring CRDs) build in the background at the lowest priority from here on, using what
# CPU the Rust builds leave (links, downloads); the suite waits for them. Each script caches by
# version (a warm machine finishes this at once), and a second build of one waits for the first.
go_tools_log="$(mktemp)"
(
  set -e
  renice -n 19 -p "$BASHPID" >/dev/null
  bash tests/testbin/build.sh control-plane >/dev/null
  bash tests/testbin/build-tool.sh helm >/dev/null
  bash tests/testbin/build-probe.sh >/dev/null
  bash tests/testbin/monitoring-crds.sh >/dev/null
) >"$go_tools_log" 2>&1 </dev/null &
go_tools=$!
# A failure further on leaves nothing building behind it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# Unit tests, the router in-process, TLS on loopback, the CLI and the packaging checks.
cargo test --locked

# The image for linux/amd64 first (dist/): the hostile clients and the real node run its binary.
SUC_IMAGE_PLATFORMS=linux/amd64 bash image/build.sh

# Hostile clients on loopback against the linux/amd64 release binary the image ships: oversized
# and pathological reviews with peak memory read from /proc, floods of idle and slow connections,
# and `check` on a YAML bomb and a 200 MB file.
image_target="${CARGO_TARGET_DIR:-${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}/image-target}"
SUC_BINARY="$image_target/x86_64-unknown-linux-musl/release/system-upgrade-controller" \
  cargo test --locked --features adversarial --test adversarial

# The end-to-end suite needs the Go tools now: when they are still building, they get the CPU
# before anything below starts.
if ! wait "$go_tools"; then
  cat "$go_tools_log" >&2
  echo "building the end-to-end suite's Go tools failed" >&2
  exit 1
fi
rm -f "$go_tools_log"

# Beside the end-to-end suite, which mostly waits on the API server, at the lowest priority:
# what is needed only later (promtool for the suite's last test, which waits for it; the real
# node's kubelet and kube-proxy), then the whole image: release binaries cross-compiled for
# linux/amd64, linux/arm64 and linux/arm/v7, assembled into OCI archives without a daemon, then
# opened and checked: manifests, layers, no shell, each binary run from its own layer (under qemu
# for arm), skopeo reading them. Written apart and moved into dist/ once checked, so the real
# node's archive is never rewritten under it. In turn, these builds took about 25 of CI's minutes.
image_all="$(mktemp -d)"
(
  set -e
  renice -n 19 -p "$BASHPID" >/dev/null
  bash tests/testbin/build-tool.sh promtool >/dev/null
  bash tests/testbin/build.sh >/dev/null
  SUC_IMAGE_OUT="$image_all/dist" bash image/build.sh
  python3 image/check.py "$image_all/dist"
  # The benchmarks' release builds too (target/ is free once the suite's own build is done):
  # the example with the binary, and the binary alone (built apart, its dependencies' features
  # differ from those the example's dev-dependencies bring).
  cargo build --release --locked --bin system-upgrade-controller --example bench
  cargo build --release --locked --bin system-upgrade-controller
) >"$image_all/log" 2>&1 </dev/null &
image_job=$!

# End to end against a real control plane (built above from the Go module proxy when the cache
# is cold): a fresh one started (or SUC_E2E_KUBECONFIG's reused), the suite run, the plane stopped.
cargo test --locked --features e2e --test e2e

# The same control plane with one real kubelet node (containerd, runc, CNI bridge, kube-proxy;
# root only; its kubelet and kube-proxy built above, which cluster.sh waits for if need be): the
# controller installed from the image just built, and upgrade pods that really run.
SUC_REAL_NODE_IMAGE="$PWD/dist/system-upgrade-controller-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)-linux-amd64.tar" \
  cargo test --locked --features e2e --test e2e -- --real-node

image_ok=0
wait "$image_job" || image_ok=$?
cat "$image_all/log"
if ((image_ok)); then
  echo "the three-platform image failed to build or check" >&2
  exit 1
fi
mv "$image_all"/dist/* dist/
rm -rf "$image_all"

# The benchmarks run from their one command, at a small size (the figures in BENCHMARKS.md come
# from larger runs): a rollout on a fresh 10-node cluster, and the webhook under wrk for 3 s.
bench_out="$(mktemp -d)"
bash bench/run.sh --nodes 10 --concurrency 3 --idle-plans 3 --idle-seconds 5 --dir "$bench_out" --out "$bench_out/bench.json"
bash bench/webhook.sh --duration 3s
rm -rf "$bench_out"

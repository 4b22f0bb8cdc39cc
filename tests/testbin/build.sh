#!/usr/bin/env bash
# Builds the real control plane used by the end-to-end tests (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd), the real node's kubelet and kube-proxy, and kwok from the Go module proxy,
# into a cache directory keyed by version; and kubelet-versions (./k8s/kubeletversions), which
# brings simulated nodes to the version their K3s or RKE2 upgrade installed.
# Prints the cache directory on stdout. A second run builds only what is missing; one started
# while another builds waits for it (a lock beside the cache).
#   build.sh                  # everything
#   build.sh control-plane    # without the real node's kubelet and kube-proxy
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

k8s_version="$(cd "$here/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
kwok_version="$(cd "$here/kwok" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/k8s-$k8s_version-kwok-$kwok_version"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)
[[ ${1:-} == control-plane ]] || bins+=(kubelet kube-proxy)
mkdir -p "$out"
missing_bins() {
  missing=()
  for b in "${bins[@]}"; do [[ -s "$out/$b" ]] || missing+=("$b"); done
}
missing_bins
if ((${#missing[@]})); then
  # One build at a time: a run that finds another building waits, then builds what is left.
  exec 9>"$out.lock"
  flock 9
  missing_bins
fi
if ((${#missing[@]})); then
  minor="$(echo "$k8s_version" | cut -d. -f2)"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
   -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
   -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  echo "building ${missing[*]} (Kubernetes $k8s_version, kwok $kwok_version) into $out; cold builds take 10-20 minutes" >&2
  tmp="$(mktemp -d "$out.tmp.XXXXXX")"
  for b in "${missing[@]}"; do
    case "$b" in
      etcd) (cd "$here/k8s" && go build -p 2 -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) ;;
      kwok) (cd "$here/kwok" && go build -p 2 -trimpath -ldflags "-s -w" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok) ;;
      *) (cd "$here/k8s" && go build -p 2 -trimpath -ldflags "$ldflags" -o "$tmp/$b" "k8s.io/kubernetes/cmd/$b") ;;
    esac >&2
    # Moved in one step, so an interrupted build never leaves a half-written binary in the cache.
    mv "$tmp/$b" "$out/$b"
  done
  rm -rf "$tmp"
  "$out/kube-apiserver" --version >&2
fi
# Our own tool follows its source (the Go build cache makes this quick once built).
(cd "$here/k8s" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out/kubelet-versions.new.$$" ./kubeletversions \
  && mv "$out/kubelet-versions.new.$$" "$out/kubelet-versions") >&2
# The stage list is cheap to regenerate and follows tests/testbin/kwok/stages.
(cd "$here/kwok" && go run ./stages >"$out/kwok-stages.yaml.new.$$" && mv "$out/kwok-stages.yaml.new.$$" "$out/kwok-stages.yaml") >&2
echo "$out"

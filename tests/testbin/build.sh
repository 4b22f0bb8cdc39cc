#!/usr/bin/env bash
# Builds the real control plane used by the end-to-end tests (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd) and kwok from the Go module proxy, into a cache directory keyed by version.
# Prints the cache directory on stdout. A second run with the same versions does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod

k8s_version="$(cd "$here/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
kwok_version="$(cd "$here/kwok" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/k8s-$k8s_version-kwok-$kwok_version"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok kwok-stages.yaml)

complete=1
for b in "${bins[@]}"; do [[ -s "$out/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then
  # The stage list is cheap to regenerate and follows tests/testbin/kwok/stages.
  (cd "$here/kwok" && go run ./stages >"$out/kwok-stages.yaml.new" && mv "$out/kwok-stages.yaml.new" "$out/kwok-stages.yaml") >&2
  echo "$out"
  exit 0
fi

mkdir -p "$out.tmp"
minor="$(echo "$k8s_version" | cut -d. -f2)"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
echo "building Kubernetes $k8s_version and kwok $kwok_version into $out (cold builds take 10-20 minutes)" >&2
(
  cd "$here/k8s"
  go build -p 2 -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
) >&2
(
  cd "$here/kwok"
  go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
  go run ./stages > "$out.tmp/kwok-stages.yaml"
) >&2
rm -rf "$out"
mv "$out.tmp" "$out"
"$out/kube-apiserver" --version >&2
echo "$out"

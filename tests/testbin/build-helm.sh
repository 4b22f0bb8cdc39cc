#!/usr/bin/env bash
# Builds helm (the version tests/testbin/helm/go.mod pins) from the Go module proxy into a cache
# directory keyed by version, and prints the binary's path. A second run does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
version="$(cd "$here/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/helm-$version/helm"
if [[ ! -x $out ]]; then
  echo "building helm $version into $out (a few minutes the first time)" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$here/helm" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp" helm.sh/helm/v3/cmd/helm) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"

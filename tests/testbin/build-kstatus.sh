#!/usr/bin/env bash
# Builds the kstatus probe (tests/testbin/kstatus: cli-utils' kstatus rules, which Flux's health
# checks use) into a cache directory keyed by the cli-utils version, and prints the binary's path.
# A second run does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
version="$(cd "$here/kstatus" && go list -m -f '{{.Version}}' sigs.k8s.io/cli-utils)"
sum="$(cat "$here/kstatus/main.go" "$here/kstatus/go.sum" | sha256sum | cut -c1-12)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/kstatus-$version-$sum/kstatus"
if [[ ! -x $out ]]; then
  echo "building the kstatus probe (cli-utils $version) into $out" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$here/kstatus" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp" .) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"

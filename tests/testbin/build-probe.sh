#!/usr/bin/env bash
# Builds the test probe (tests/testbin/probe: cli-utils' kstatus rules, which Flux's health
# checks use; Argo CD's Lua health scripts under gopher-lua; Prometheus' PromQL parser) into a
# cache directory keyed by its sources, and prints the binary's path. A second run does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
version="$(cd "$here/probe" && go list -m -f '{{.Version}}' sigs.k8s.io/cli-utils)"
sum="$(cat "$here/probe/main.go" "$here/probe/go.sum" | sha256sum | cut -c1-12)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/probe-$version-$sum/probe"
mkdir -p "$(dirname "$out")"
# One build at a time: a second run waits for the first and finds its binary.
exec 9>"$out.lock"
flock 9
if [[ ! -x $out ]]; then
  echo "building the test probe (cli-utils $version, PromQL, gopher-lua) into $out" >&2
  (cd "$here/probe" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp" .) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"

#!/usr/bin/env bash
# Builds promtool (the version tests/testbin/promtool/go.mod pins) from the Go module proxy into a
# cache directory keyed by version, and prints the binary's path. A second run does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
version="$(cd "$here/promtool" && go list -m -f "{{.Version}}" github.com/prometheus/prometheus)"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/promtool-$version/promtool"
if [[ ! -x $out ]]; then
  echo "building promtool $version into $out (a few minutes the first time)" >&2
  mkdir -p "$(dirname "$out")"
  (cd "$here/promtool" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/prometheus/prometheus/cmd/promtool) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"

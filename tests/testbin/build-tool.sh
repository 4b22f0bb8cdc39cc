#!/usr/bin/env bash
# Builds a Go command the tests use, at the version a wrapper module here pins, from the Go module
# proxy into a cache directory keyed by version, and prints the binary's path. A second run does
# nothing.
#   build-tool.sh helm        # helm.sh/helm/v3/cmd/helm, as tests/testbin/helm/go.mod pins it
#   build-tool.sh promtool    # github.com/prometheus/prometheus/cmd/promtool, as ./promtool pins it
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
tool="${1:?name a tool: helm or promtool}"
case "$tool" in
  helm) module=helm.sh/helm/v3 package=$module/cmd/helm ;;
  promtool) module=github.com/prometheus/prometheus package=$module/cmd/promtool ;;
  *) echo "unknown tool $tool" >&2; exit 2 ;;
esac
version="$(cd "$here/$tool" && go list -m -f '{{.Version}}' "$module")"
cache="${SUC_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/suc-rs}"
out="$cache/$tool-$version/$tool"
mkdir -p "$(dirname "$out")"
# One build at a time: a second run waits for the first and finds its binary.
exec 9>"$out.lock"
flock 9
if [[ ! -x $out ]]; then
  echo "building $tool $version into $out (a few minutes the first time)" >&2
  (cd "$here/$tool" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp" "$package") >&2
  mv "$out.tmp" "$out"
fi
echo "$out"

#!/usr/bin/env bash
# Fetches the prometheus-operator module that tests/testbin/monitoring/go.mod pins (checked
# against its go.sum) from the Go module proxy, and prints the directory of its CRDs. Nothing is
# built; a second run reads the module cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod
dir="$(cd "$here/monitoring" && go mod download -json github.com/prometheus-operator/prometheus-operator |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d $dir/example/prometheus-operator-crd ]] || { echo "no CRDs under '$dir'" >&2; exit 1; }
echo "$dir/example/prometheus-operator-crd"

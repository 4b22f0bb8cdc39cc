#!/usr/bin/env bash
# Recomputes tests/vectors/plan-hash.json with the Go libraries the Go controller uses:
#   bash tests/testbin/hashvectors/run.sh          # report vectors whose hash differs
#   bash tests/testbin/hashvectors/run.sh -write   # write the computed hashes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$here"
go run . -file "$here/../../vectors/plan-hash.json" "$@"
